"""The Cell Ontology (CL), read with pronto."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pronto

logger = logging.getLogger(__name__)

#: the official basic edition of the Cell Ontology (is_a hierarchy, no imported terms)
CL_BASIC_URL = "http://purl.obolibrary.org/obo/cl/cl-basic.obo"


def cell_ontology(path: str | os.PathLike | None = None) -> pronto.Ontology:
    """Read the Cell Ontology.

    Parameters
    ----------
    path
        Local OBO (or OWL) file of the ontology, e.g. ``cl-basic.obo``. ``None`` downloads the
        current official ``cl-basic.obo`` once (needs the optional dependency :mod:`pooch`,
        ``pip install scsalient[download]``) and reads the cached copy afterwards. The release
        served at that address changes over time and carries no published checksum; pass a
        local file for reproducible results.

    Returns
    -------
    The ontology; terms are looked up by CL ID, e.g. ``onto["CL:0000236"].name == "B cell"``.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.

    Examples
    --------
    >>> import scsalient as ss
    >>> onto = ss.datasets.cell_ontology("cl-basic.obo")  # doctest: +SKIP
    >>> onto["CL:0000236"].name  # doctest: +SKIP
    'B cell'
    """
    import pronto

    file = _fetch_cl_basic() if path is None else Path(path)
    if not file.exists():
        raise FileNotFoundError(f"Ontology file not found: {file}")
    with warnings.catch_warnings():
        # pronto warns about OBO header details irrelevant to the term hierarchy
        warnings.simplefilter("ignore", category=SyntaxWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        return pronto.Ontology(str(file))


def _fetch_cl_basic() -> Path:
    try:
        import pooch
    except ImportError:
        raise ImportError(
            "Downloading the Cell Ontology needs the optional dependency pooch: `pip install pooch`. "
            "Alternatively pass a local copy of cl-basic.obo with `path=`."
        ) from None
    logger.info("Fetching cl-basic.obo from %s (cached after the first download).", CL_BASIC_URL)
    file = pooch.retrieve(
        url=CL_BASIC_URL,
        known_hash=None,
        fname="cl-basic.obo",
        path=pooch.os_cache("scsalient"),
        progressbar=False,
    )
    return Path(file)
