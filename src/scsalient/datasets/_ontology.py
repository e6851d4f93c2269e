"""The Cell Ontology (CL), read with pronto."""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from ._download import RELEASES, fetch

if TYPE_CHECKING:
    import pronto


def cell_ontology(path: str | os.PathLike | None = None) -> pronto.Ontology:
    """Read the Cell Ontology.

    Parameters
    ----------
    path
        Local OBO (or OWL) file of the ontology, e.g. ``cl-basic.obo``. ``None`` reads the basic
        edition of Cell Ontology release 2022-11-25 (``cl-basic.obo``, the release asset at
        ``https://github.com/obophenotype/cell-ontology/releases/download/v2022-11-25/``),
        downloaded once with :mod:`pooch` and verified against its pinned SHA-256 on every use;
        a file with another hash is rejected. For another release, pass its file here.

    Returns
    -------
    The ontology; terms are looked up by CL ID, e.g. ``onto["CL:0000236"].name == "B cell"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If the downloaded file does not have the pinned SHA-256.

    Examples
    --------
    >>> import scsalient as ss
    >>> onto = ss.datasets.cell_ontology("cl-basic.obo")  # doctest: +SKIP
    >>> onto["CL:0000236"].name  # doctest: +SKIP
    'B cell'
    """
    import pronto

    file = fetch(RELEASES["cl-basic"]) if path is None else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"Ontology file not found: {file}")
    with warnings.catch_warnings():
        # pronto warns about OBO header details irrelevant to the term hierarchy
        warnings.simplefilter("ignore", category=SyntaxWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        return pronto.Ontology(str(file))
