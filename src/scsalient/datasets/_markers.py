"""Readers for cell-type marker databases and gene-set files.

Every reader returns the same tidy table: one row per ``(cell_type, gene)`` pair with a
non-negative ``weight``. :func:`scsalient.tl.query_cell_types` consumes this table.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from ._download import RELEASES, fetch

logger = logging.getLogger(__name__)

__all__ = ["marker_database", "read_gmt"]

COLUMNS = ("cell_type", "gene", "weight")

_SPECIES_ALIASES = {
    "human": "human",
    "hs": "human",
    "homo sapiens": "human",
    "hsapiens": "human",
    "mouse": "mouse",
    "mm": "mouse",
    "mus musculus": "mouse",
    "mmusculus": "mouse",
}
_PANGLAO_SPECIES_CODE = {"human": "Hs", "mouse": "Mm"}


@dataclass(frozen=True)
class _Database:
    title: str
    unpinned: str  # why it is not downloaded and where to get it, for the error message


#: Databases named by a short name. Their files are downloaded only when a release is pinned in
#: :data:`scsalient.datasets._download.RELEASES` under the same name; otherwise ``path=`` is needed.
_DATABASES: dict[str, _Database] = {
    "panglaodb": _Database(
        title="PanglaoDB",
        unpinned=(
            "PanglaoDB publishes no checksum for its marker export, and scsalient has no verified "
            "copy of the release file to pin a SHA-256 from, so it does not download it. Download "
            "PanglaoDB_markers_27_Mar_2020.tsv.gz from https://panglaodb.se/markers.html and pass it: "
            "marker_database('panglaodb', path='PanglaoDB_markers_27_Mar_2020.tsv.gz')."
        ),
    ),
    "cellmarker": _Database(
        title="CellMarker",
        unpinned=(
            "CellMarker 2.0 serves its tables without version, checksum or HTTPS, and they change "
            "over time, so scsalient does not download them. Download Cell_marker_Human.xlsx (or "
            "Cell_marker_All.xlsx) from the CellMarker 2.0 site (bio-bigdata.hrbmu.edu.cn/CellMarker) "
            "and pass it: marker_database('cellmarker', path='Cell_marker_Human.xlsx')."
        ),
    ),
}


def read_gmt(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a gene-set file in GMT format.

    Each line holds a set name, a description (ignored) and the member genes, separated by
    tabs. Gzip-compressed files (``.gmt.gz``) are read transparently.

    Parameters
    ----------
    path
        Path to the ``.gmt`` file.

    Returns
    -------
    Gene-set name to member genes, in file order and without duplicates.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"GMT file {str(path)!r} does not exist.")
    gene_sets: dict[str, list[str]] = {}
    with _open_text(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < 2:
                raise ValueError(
                    f"Line {line_number} of {str(path)!r} is not in GMT format: expected a set name, "
                    "a description and genes separated by tabs."
                )
            name = fields[0].strip()
            if name in gene_sets:
                raise ValueError(f"Gene set {name!r} occurs twice in {str(path)!r} (line {line_number}).")
            genes = [gene.strip() for gene in fields[2:] if gene.strip()]
            gene_sets[name] = list(dict.fromkeys(genes))
    if not gene_sets:
        raise ValueError(f"GMT file {str(path)!r} holds no gene sets.")
    return gene_sets


def marker_database(
    source: str | os.PathLike | Mapping[str, Any] | pd.DataFrame,
    species: Literal["human", "mouse"] | str = "human",
    *,
    path: str | os.PathLike | None = None,
    tissue: str | Iterable[str] | None = None,
    min_weight: float | None = None,
) -> pd.DataFrame:
    """Load a cell-type marker database as a tidy table.

    Supported sources, detected from the file extension and the header:

    * **GMT** gene-set files (``.gmt``): every member gets weight 1.
    * **PanglaoDB** marker export (``.tsv`` / ``.tsv.gz`` with an ``official gene symbol``
      column). Rows are kept when the ``species`` column lists the requested species
      (``"Hs"`` / ``"Mm"``); the weight is that species' sensitivity (fraction of the type's
      cells expressing the marker in PanglaoDB's data), and 1 where the sensitivity is missing.
      A cell type whose markers all have sensitivity 0 has no data in that species (111 of the
      178 human types in the 27 Mar 2020 export), so its sensitivities count as missing (weight
      1); within the other types a sensitivity of 0 is kept (the marker was not detected).
      The file stores one upper-case symbol per row for both species; with
      ``species="mouse"`` the symbols are converted to mouse style (first letter upper case,
      the rest lower case, e.g. ``"CD3E"`` to ``"Cd3e"``), which is right for most genes but
      not for a few mixed-case mouse symbols (``"H2-AB1"`` becomes ``"H2-ab1"``, the MGI symbol
      is ``"H2-Ab1"``); case-insensitive matching in :func:`scsalient.tl.query_cell_types` is
      unaffected.
    * **CellMarker**: the official CellMarker 2.0 table (``Cell_marker_*.xlsx``, or the same
      columns saved as CSV/TSV: ``species``, ``tissue_class``, ``tissue_type``, ``cell_name``,
      ``Symbol``), or the derived CSV with columns ``Tissue``, ``CT``, ``Gene`` (comma-separated
      genes). The weight is the number of records (publications / tissues) that list the gene
      for the cell type, so ``min_weight=2`` keeps markers with repeated support.
    * **pegasus** marker JSON files: the hierarchy is flattened, each subtype becomes its own
      cell type, positive markers (``"GENE+"``) get the weight of their marker set and negative
      markers (``"GENE-"``) are dropped.
    * A mapping ``{cell_type: [genes]}`` (weight 1) or ``{cell_type: {gene: weight}}``.
    * A :class:`~pandas.DataFrame` or a CSV/TSV file with columns ``cell_type``, ``gene`` and
      optionally ``weight`` (default 1).
    * The database names ``"panglaodb"`` and ``"cellmarker"`` (a ``str``; never resolved as a
      file of the working directory) with ``path=`` pointing to a local copy of that database
      (the PanglaoDB export ``PanglaoDB_markers_27_Mar_2020.tsv.gz``, or a CellMarker table).
      Neither database is downloaded: scsalient downloads only files whose SHA-256 it pins, and
      neither PanglaoDB (no published checksum, and no copy of the release file at hand to pin
      one from) nor CellMarker (tables served without version, checksum or HTTPS) can be
      pinned, so a name without ``path=`` raises a :class:`ValueError` that says where to get
      the file. Reading the CellMarker ``.xlsx`` needs :mod:`openpyxl`.

    Any other ``str`` and every :class:`~os.PathLike` is a file path; a file named like a
    database is read with ``pathlib.Path("panglaodb")``.

    Duplicated ``(cell_type, gene)`` pairs keep their largest weight.

    Parameters
    ----------
    source
        File path, database name, mapping or data frame (see above).
    species
        ``"human"`` or ``"mouse"`` (``"hs"``/``"mm"`` also accepted). Filters PanglaoDB and the
        official CellMarker table; for single-species files (pegasus JSON, CellMarker files named
        after a species) a mismatch only warns.
    path
        Local copy of the database named by ``source`` (``"panglaodb"`` or ``"cellmarker"``);
        required for these names.
    tissue
        Keep only markers from these tissues (case-insensitive): PanglaoDB ``organ``, CellMarker
        ``Tissue`` / ``tissue_class`` / ``tissue_type``. Not available for other sources.
    min_weight
        Drop markers with a weight below this value.

    Returns
    -------
    Data frame with columns ``cell_type`` (str), ``gene`` (str) and ``weight`` (float), sorted by
    cell type and decreasing weight.

    Examples
    --------
    >>> import scsalient
    >>> db = scsalient.datasets.marker_database({"B cell": ["MS4A1", "CD79A"], "NK cell": ["NKG7"]})
    >>> db.shape
    (3, 3)
    """
    species = _check_species(species)
    if min_weight is not None and not np.isfinite(min_weight):
        raise ValueError(f"`min_weight` must be a finite number, got {min_weight!r}.")
    tissues = _check_tissue(tissue)
    if path is not None and not (isinstance(source, str) and _database_name(source) is not None):
        raise ValueError(
            "`path` is only used with a database name as `source` ('panglaodb', 'cellmarker'); "
            "pass any other file as `source`."
        )

    if isinstance(source, pd.DataFrame):
        _no_tissue(tissues, "a DataFrame")
        frame = _from_frame(source, what="the DataFrame")
        description = "the DataFrame"
    elif isinstance(source, Mapping):
        _no_tissue(tissues, "a mapping")
        frame = _from_mapping(source)
        description = "the mapping"
    elif isinstance(source, str | os.PathLike):
        frame, description = _from_path_or_name(source, species=species, path=path, tissues=tissues)
    else:
        raise TypeError(
            "`source` must be a file path, a database name ('panglaodb', 'cellmarker'), a mapping or a "
            f"DataFrame, got {type(source).__name__}."
        )
    frame = _tidy(frame)
    if min_weight is not None:
        frame = frame.loc[frame["weight"] >= min_weight]
    if frame.empty:
        filters = []
        if tissues is not None:
            filters.append(f"tissue={sorted(tissues)}")
        if min_weight is not None:
            filters.append(f"min_weight={min_weight}")
        filters.append(f"species={species!r}")
        raise ValueError(f"No markers left from {description} with {', '.join(filters)}.")
    frame = frame.sort_values(["cell_type", "weight", "gene"], ascending=[True, False, True], kind="stable")
    frame = frame.reset_index(drop=True)
    frame.attrs["source"] = description
    frame.attrs["species"] = species
    logger.info(
        "Read %d markers of %d cell types from %s.", len(frame), frame["cell_type"].nunique(), description
    )
    return frame


# --------------------------------------------------------------------------------------------
# dispatch


def _from_path_or_name(
    source: str | os.PathLike,
    *,
    species: str,
    path: str | os.PathLike | None,
    tissues: set[str] | None,
) -> tuple[pd.DataFrame, str]:
    name = _database_name(source)
    if name is not None:  # a database name: never a file of the working directory
        if path is not None:
            file = Path(path)
            if not file.exists():
                raise FileNotFoundError(f"Marker file {str(file)!r} (path= of {source!r}) does not exist.")
        elif name in RELEASES:
            file = fetch(RELEASES[name])
        else:
            raise ValueError(f"marker_database({source!r}) needs `path=`: {_DATABASES[name].unpinned}")
        read = _read_panglaodb if name == "panglaodb" else _read_cellmarker
        return read(file, species=species, tissues=tissues), f"{_DATABASES[name].title} ({file.name})"

    file = Path(source)
    if not file.exists():
        raise FileNotFoundError(
            f"Marker source {str(source)!r} is neither an existing file nor one of the database names "
            f"{sorted(_DATABASES)}."
        )
    if file.is_dir():
        raise ValueError(f"Marker source {str(source)!r} is a directory, expected a file.")
    kind = _detect_format(file)
    description = f"{file.name}"
    if kind == "gmt":
        _no_tissue(tissues, "GMT files")
        sets = read_gmt(file)
        frame = _from_mapping(sets)
    elif kind == "pegasus":
        _no_tissue(tissues, "pegasus JSON files")
        frame = _read_pegasus(file, species=species)
    elif kind == "panglaodb":
        frame = _read_panglaodb(file, species=species, tissues=tissues)
    elif kind == "cellmarker":
        frame = _read_cellmarker(file, species=species, tissues=tissues)
    else:  # tidy table
        _no_tissue(tissues, "tidy marker tables")
        frame = _from_frame(_read_table(file), what=repr(str(file)))
    return frame, description


def _database_name(source: str | os.PathLike) -> str | None:
    """The database a string names (``"panglaodb"``, ``"cellmarker"``); ``None`` for a path.

    Only a ``str`` can be a name; a :class:`~os.PathLike` is always a path, so a file named like
    a database is read with ``Path("panglaodb")``.
    """
    if isinstance(source, str) and source.strip().lower() in _DATABASES:
        return source.strip().lower()
    return None


def _detect_format(file: Path) -> str:
    name = file.name.lower()
    if name.endswith(".gz"):
        name = name[: -len(".gz")]
    suffix = Path(name).suffix
    if suffix == ".gmt":
        return "gmt"
    if suffix == ".json":
        return "pegasus"
    if suffix in {".xlsx", ".xls"}:
        return "cellmarker"
    with _open_text(file) as handle:
        head = handle.read(4096)
    stripped = head.lstrip()
    if stripped.startswith("{"):
        return "pegasus"
    first_line = head.splitlines()[0] if head else ""
    sep = "\t" if "\t" in first_line else ","
    header = {column.strip().strip('"').lower() for column in first_line.split(sep)}
    if "official gene symbol" in header:
        return "panglaodb"
    if {"ct", "gene"} <= header or {"cell_name", "symbol"} <= header:
        return "cellmarker"
    if {"cell_type", "gene"} <= header:
        return "table"
    if suffix in {".txt", ".tsv"} and "\t" in first_line and len(first_line.split("\t")) >= 3:
        # a GMT file saved under another extension: name, description, genes
        return "gmt"
    raise ValueError(
        f"Cannot tell the format of {str(file)!r}. Supported: GMT (.gmt), pegasus JSON (.json), PanglaoDB "
        "TSV ('official gene symbol' column), CellMarker (.xlsx, or CSV with 'cell_name'/'Symbol' or "
        "'CT'/'Gene' columns) and tables with 'cell_type' and 'gene' columns."
    )


# --------------------------------------------------------------------------------------------
# readers


def _read_panglaodb(file: Path, *, species: str, tissues: set[str] | None) -> pd.DataFrame:
    table = _read_table(file, sep="\t")
    columns = {column.lower(): column for column in table.columns}
    required = ["species", "official gene symbol", "cell type"]
    missing = [column for column in required if column not in columns]
    if missing:
        raise ValueError(f"{str(file)!r} is not a PanglaoDB export: missing columns {missing}.")
    code = _PANGLAO_SPECIES_CODE[species]
    species_lists = table[columns["species"]].fillna("").astype(str).str.split()
    keep = species_lists.map(lambda codes: code in codes).to_numpy(dtype=bool)
    if tissues is not None:
        if "organ" not in columns:
            raise ValueError(f"{str(file)!r} has no 'organ' column to filter by tissue.")
        keep &= table[columns["organ"]].fillna("").astype(str).str.lower().isin(tissues).to_numpy()
    table = table.loc[keep]
    cell_types = table[columns["cell type"]].astype("string").str.strip()
    sensitivity = columns.get(f"sensitivity_{species}")
    if sensitivity is not None:
        weight = pd.to_numeric(table[sensitivity], errors="coerce")
        # a type whose markers all have sensitivity 0 (or none) was not measured in this species
        measured = weight.fillna(0).gt(0).groupby(cell_types.to_numpy()).transform("any")
        weight = weight.where(measured.to_numpy()).fillna(1.0)
    else:
        weight = pd.Series(1.0, index=table.index)
    genes = table[columns["official gene symbol"]].astype("string").str.strip()
    if species == "mouse":
        genes = genes.str.capitalize()
    return pd.DataFrame(
        {"cell_type": cell_types.to_numpy(), "gene": genes.to_numpy(), "weight": weight.to_numpy()}
    )


def _read_cellmarker(file: Path, *, species: str, tissues: set[str] | None) -> pd.DataFrame:
    if file.suffix.lower() in {".xlsx", ".xls"}:
        try:
            table = pd.read_excel(file)
        except ImportError as error:
            raise ImportError(
                f"Reading {file.name} needs an Excel reader: `pip install openpyxl`. ({error})"
            ) from None
    else:
        table = _read_table(file)
    columns = {str(column).strip().lower(): column for column in table.columns}

    if {"ct", "gene"} <= set(columns):  # derived table: Tissue, CT, comma-separated Gene
        _warn_species_from_name(file, species)
        if tissues is not None:
            if "tissue" not in columns:
                raise ValueError(f"{str(file)!r} has no 'Tissue' column to filter by tissue.")
            mask = table[columns["tissue"]].fillna("").astype(str).str.strip().str.lower().isin(tissues)
            table = table.loc[mask]
        genes = table[columns["gene"]].fillna("").astype(str).str.split(",")
        long = pd.DataFrame({"cell_type": table[columns["ct"]].to_numpy(), "gene": genes.to_numpy()})
        long = long.explode("gene")
    elif {"cell_name", "symbol"} <= set(columns):  # official CellMarker 2.0 / 3.0 layout
        if "species" in columns:
            wanted = species.capitalize()
            table = table.loc[table[columns["species"]].astype(str).str.strip().str.capitalize() == wanted]
        else:
            _warn_species_from_name(file, species)
        if tissues is not None:
            tissue_columns = [columns[c] for c in ("tissue_class", "tissue_type") if c in columns]
            if not tissue_columns:
                raise ValueError(f"{str(file)!r} has no tissue column to filter by tissue.")
            mask = np.zeros(len(table), dtype=bool)
            for column in tissue_columns:
                mask |= table[column].fillna("").astype(str).str.strip().str.lower().isin(tissues).to_numpy()
            table = table.loc[mask]
        long = pd.DataFrame(
            {"cell_type": table[columns["cell_name"]].to_numpy(), "gene": table[columns["symbol"]].to_numpy()}
        )
    else:
        raise ValueError(
            f"{str(file)!r} is not a CellMarker table: expected columns 'cell_name' and 'Symbol' (CellMarker "
            "2.0) or 'CT' and 'Gene' (derived table)."
        )
    long = _clean_strings(long)
    # support = number of records listing the gene for the cell type
    counts = long.groupby(["cell_type", "gene"], sort=False, observed=True).size()
    return counts.rename("weight").astype(float).reset_index()


def _read_pegasus(file: Path, *, species: str) -> pd.DataFrame:
    with _open_text(file) as handle:
        try:
            content = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(file)!r} is not valid JSON: {error}") from None
    if not isinstance(content, Mapping) or "cell_types" not in content:
        raise ValueError(
            f"{str(file)!r} is not a pegasus marker file: expected a JSON object with a 'cell_types' list."
        )
    title = str(content.get("title", "")).lower()
    other = {"human": "mouse", "mouse": "human"}[species]
    if other in title.split() and species not in title.split():
        warnings.warn(
            f"{file.name} holds {other} markers ({content.get('title')!r}) but species={species!r}.",
            UserWarning,
            stacklevel=4,
        )

    rows: list[tuple[str, str, float]] = []

    def walk(cell_types: list[Mapping[str, Any]]) -> None:
        for cell_type in cell_types:
            name = str(cell_type["name"]).strip()
            for marker_set in cell_type.get("markers", []):
                weight = float(marker_set.get("weight", 1.0))
                for gene in marker_set.get("genes", []):
                    gene = str(gene).strip()
                    if gene.endswith("-"):  # negative marker: the type does not express it
                        continue
                    rows.append((name, gene.removesuffix("+"), weight))
            subtypes = cell_type.get("subtypes")
            if subtypes:
                walk(subtypes.get("cell_types", []))

    try:
        walk(content["cell_types"])
    except (KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{str(file)!r} does not follow the pegasus marker layout: {error!r}") from None
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _from_mapping(source: Mapping[str, Any]) -> pd.DataFrame:
    rows: list[tuple[str, str, float]] = []
    for cell_type, genes in source.items():
        if isinstance(genes, pd.Series):
            genes = genes.to_dict()
        if isinstance(genes, Mapping):
            rows.extend((cell_type, gene, weight) for gene, weight in genes.items())
        elif isinstance(genes, str | bytes) or not isinstance(genes, Iterable):
            raise TypeError(
                f"Markers of {cell_type!r} must be a list of genes or a mapping gene -> weight, "
                f"got {type(genes).__name__}."
            )
        else:
            rows.extend((cell_type, gene, 1.0) for gene in genes)
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    weight = pd.to_numeric(frame["weight"], errors="coerce")
    if weight.isna().any():
        bad = frame.loc[weight.isna()].iloc[0]
        raise ValueError(
            f"Weight of {bad['gene']!r} in {bad['cell_type']!r} is not a number: {bad['weight']!r}."
        )
    frame["weight"] = weight.astype(float)
    return frame


def _from_frame(table: pd.DataFrame, *, what: str) -> pd.DataFrame:
    missing = [column for column in ("cell_type", "gene") if column not in table.columns]
    if missing:
        raise ValueError(f"{what} misses the column(s) {missing}; expected 'cell_type', 'gene' and 'weight'.")
    frame = table[["cell_type", "gene"]].copy()
    if "weight" in table.columns:
        weight = pd.to_numeric(table["weight"], errors="coerce")
        if weight.isna().any():
            raise ValueError(f"Column 'weight' of {what} holds missing or non-numeric values.")
        frame["weight"] = weight.astype(float).to_numpy()
    else:
        frame["weight"] = 1.0
    return frame


# --------------------------------------------------------------------------------------------
# helpers


def _tidy(frame: pd.DataFrame) -> pd.DataFrame:
    frame = _clean_strings(frame)
    weight = frame["weight"].astype(float)
    if not np.isfinite(weight.to_numpy()).all():
        raise ValueError("Marker weights must be finite numbers.")
    if (weight < 0).any():
        raise ValueError("Marker weights must be non-negative.")
    frame = frame.assign(weight=weight)
    frame = frame.groupby(["cell_type", "gene"], sort=False, observed=True, as_index=False)["weight"].max()
    frame["cell_type"] = frame["cell_type"].astype(object)
    frame["gene"] = frame["gene"].astype(object)
    return frame[list(COLUMNS)]


def _clean_strings(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.copy()
    for column in ("cell_type", "gene"):
        values = frame[column].astype("string").str.strip()
        values = values.mask(values.str.lower().isin(["", "nan", "na", "none"]))
        frame[column] = values
    return frame.dropna(subset=["cell_type", "gene"])


def _read_table(file: Path, sep: str | None = None) -> pd.DataFrame:
    if sep is None:
        with _open_text(file) as handle:
            first_line = handle.readline()
        sep = "\t" if "\t" in first_line else ","
    return pd.read_csv(file, sep=sep, dtype=str, keep_default_na=True, compression="infer")


def _open_text(file: Path):
    if file.name.lower().endswith(".gz"):
        return gzip.open(file, "rt", encoding="utf-8")
    return open(file, encoding="utf-8")


def _check_species(species: str) -> str:
    key = str(species).strip().lower()
    if key not in _SPECIES_ALIASES:
        raise ValueError(f"`species` must be 'human' or 'mouse', got {species!r}.")
    return _SPECIES_ALIASES[key]


def _check_tissue(tissue: str | Iterable[str] | None) -> set[str] | None:
    if tissue is None:
        return None
    values = [tissue] if isinstance(tissue, str) else list(tissue)
    if not values:
        raise ValueError("`tissue` must name at least one tissue.")
    return {str(value).strip().lower() for value in values}


def _no_tissue(tissues: set[str] | None, what: str) -> None:
    if tissues is not None:
        raise ValueError(
            f"`tissue` filtering is not available for {what}; it works for PanglaoDB and CellMarker."
        )


def _warn_species_from_name(file: Path, species: str) -> None:
    name = file.name.lower()
    other = {"human": "mouse", "mouse": "human"}[species]
    if other in name and species not in name:
        warnings.warn(
            f"{file.name} looks like a {other} marker table but species={species!r}; it has no species "
            "column to filter on.",
            UserWarning,
            stacklevel=5,
        )
