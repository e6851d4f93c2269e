"""AnnData fields shared by scsalient models."""

from __future__ import annotations

import re
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import rich.table
from mudata import MuData
from scipy import sparse
from scvi.data.fields import CategoricalObsField, LayerField

from ._checks import (
    InputKind,
    check_n_cells,
    check_var_names,
    decide_input_kind,
    describe_location,
    iter_row_blocks,
    raise_on_zero_cells,
    report_input_kind,
    scan_expression,
)

if TYPE_CHECKING:
    from anndata import AnnData

_NAME = {"counts": "raw counts", "lognorm": "log-normalised values"}
_TREATMENT = {
    "counts": "raw counts: normalised inside the model to log1p(CP10k)",
    "lognorm": "log-normalised values: used as given",
}


class ExpressionLayerField(LayerField):
    """Expression matrix field that validates the data and records whether it holds counts.

    A MuData raises a :class:`TypeError` naming a modality to set up instead. The whole matrix
    is scanned block by block at registration: NaN/inf, negative values, all-zero cells,
    duplicated ``var_names`` and fewer than 10 cells raise a :class:`ValueError` naming the
    problem. The detected input kind (``"counts"`` or ``"log-normalised"``, see
    :func:`~scsalient.model.base._checks.decide_input_kind`) is stated (a :class:`UserWarning`
    unless the values are integer counts; a kind the model does not accept raises instead),
    stored in the state registry, shown by
    :meth:`~scvi.model.base.BaseModelClass.view_anndata_setup`, and enforced when the setup is
    transferred to query data.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    layer
        Layer holding the matrix; ``None`` for ``.X``.
    allowed
        Input kinds the model accepts.
    empty_query_cells
        What query data (a transferred setup) may hold: ``"raise"`` refuses all-zero cells, as
        training data always do; ``"keep"`` records them in the state registry under
        ``"empty_cells"`` for the model to flag (the query must still have a non-zero cell).
    """

    INPUT_KIND_KEY = "input_kind"
    EMPTY_CELLS_KEY = "empty_cells"

    def __init__(
        self,
        registry_key: str,
        layer: str | None,
        allowed: tuple[InputKind, ...] = ("counts", "lognorm"),
        empty_query_cells: Literal["raise", "keep"] = "raise",
    ) -> None:
        super().__init__(registry_key, layer, is_count_data=False, correct_data_format=True)
        self.allowed = tuple(allowed)
        self.empty_query_cells = empty_query_cells
        self._query = False

    @property
    def where(self) -> str:
        """Location of the matrix, for messages."""
        return describe_location(self.attr_key)

    def register_field(self, adata: AnnData) -> dict:
        """Register the field after validating the matrix and detecting its kind.

        Parameters
        ----------
        adata
            The AnnData to register.
        """
        if isinstance(adata, MuData):  # its .X is None: say what to pass instead
            raise TypeError(
                "setup_anndata needs an AnnData, got a MuData. Set up one of its modalities, e.g. "
                "`setup_anndata(mdata['rna'])`; the Translator takes paired RNA + ATAC with setup_mudata."
            )
        if not self._query:
            check_n_cells(adata.n_obs)
            check_var_names(adata)
        state = super().register_field(adata)
        scan = scan_expression(self.get_field_data(adata), self.where)
        if self._query and self.empty_query_cells == "keep":
            if len(scan.zero_cells) == adata.n_obs:
                raise ValueError(
                    f"No cell of the query has a non-zero value in {self.where} for any of the model's "
                    "genes: check that the query's gene names match the model's."
                )
            state[self.EMPTY_CELLS_KEY] = scan.zero_cells
        else:
            raise_on_zero_cells(scan.zero_cells, self.where, adata.obs_names, query=self._query)
        decision = decide_input_kind(scan)
        kind = decision.kind
        if kind not in self.allowed:  # refused, not first stated as used
            wanted = " or ".join(_NAME[k] for k in self.allowed)
            raise ValueError(
                f"{self.where} holds {_NAME[kind]} ({decision.reason}), but this model needs {wanted}."
            )
        report_input_kind(decision, self.where, warn=not self._query)
        state[self.INPUT_KIND_KEY] = kind
        return state

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Transfer the setup to new data, requiring the same kind of input as at training.

        Parameters
        ----------
        state_registry
            State registry of the source setup.
        adata_target
            Data the setup is transferred to.
        **kwargs
            Passed to :meth:`scvi.data.fields.LayerField.transfer_field`.
        """
        self._query = True
        try:
            state = super().transfer_field(state_registry, adata_target, **kwargs)
        finally:
            self._query = False
        expected = state_registry.get(self.INPUT_KIND_KEY)
        if expected is not None and state[self.INPUT_KIND_KEY] != expected:
            raise ValueError(
                f"The model was set up on {_NAME[expected]}, but the query's {self.where} holds "
                f"{_NAME[state[self.INPUT_KIND_KEY]]}. "
                "Give the query the same kind of input."
            )
        return state

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        """Show the detected input kind.

        Parameters
        ----------
        state_registry
            State registry of this field.
        """
        table = rich.table.Table(title=f"{self.registry_key} input")
        table.add_column("Data", justify="center", style="dodger_blue1", no_wrap=True)
        table.add_column("Detected input", justify="center", style="green")
        table.add_row(self.where, _TREATMENT[state_registry[self.INPUT_KIND_KEY]])
        return table


class LabelsField(CategoricalObsField):
    """Labels field that registers a cleaned copy of the labels; ``adata.obs[labels_key]`` is not changed.

    * Labels of mixed types (e.g. ``1`` and ``"B"``) are turned into strings, with a
      :class:`UserWarning`: labels are names.
    * Unused categories of a categorical column are dropped, with a :class:`UserWarning`: a
      class without cells would be a class never trained.

    The class names of the registry are strings, in the column's order of categories (sorted
    for a non-categorical column).

    Parameters
    ----------
    registry_key
        Key to register the field under.
    attr_key
        Column of ``adata.obs`` holding the labels.
    """

    def __init__(self, registry_key: str, attr_key: str) -> None:
        super().__init__(registry_key, attr_key)

    def register_field(self, adata: AnnData) -> dict:
        """Register the cleaned labels (codes in ``obs["_scvi_labels"]``).

        Parameters
        ----------
        adata
            The AnnData to register.
        """
        self.validate_field(adata)
        labels = clean_labels(adata.obs[self._original_attr_key], self._original_attr_key)
        adata.obs[self.attr_key] = labels.codes
        return {
            self.CATEGORICAL_MAPPING_KEY: labels.categories.to_numpy(copy=True),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }

    def transfer_field(
        self, state_registry: dict, adata_target: AnnData, extend_categories: bool = False, **kwargs
    ) -> dict:
        """Register the labels of new data against the source's classes.

        A missing column, missing labels and labels that are not among the source's classes
        (without ``extend_categories``) raise an error that says how to predict such cells.

        Parameters
        ----------
        state_registry
            State registry of the source setup.
        adata_target
            Data the setup is transferred to.
        extend_categories
            Add classes the source did not have (otherwise they raise a :class:`ValueError`).
        **kwargs
            Unused.
        """
        key = self._original_attr_key
        mapping = pd.Index(np.asarray(state_registry[self.CATEGORICAL_MAPPING_KEY]).astype(str))
        if key not in adata_target.obs:
            raise KeyError(
                f"adata.obs has no '{key}' column, the labels the model was trained on. {_QUERY_HINT}"
            )
        values = _as_strings(adata_target.obs[key])
        n_missing = int(pd.isna(values).sum())
        if n_missing:
            raise ValueError(f"adata.obs['{key}'] has {n_missing} missing (NaN) label(s). {_QUERY_HINT}")
        unknown = pd.Index(pd.unique(values)).difference(mapping)
        if len(unknown) and not extend_categories:
            raise ValueError(
                f"adata.obs['{key}'] holds {len(unknown)} label(s) the model was not trained on "
                f"({unknown[:5].tolist()}; its classes are {mapping[:10].tolist()}). {_QUERY_HINT}"
            )
        categories = mapping.append(unknown)
        adata_target.obs[self.attr_key] = pd.Categorical(values, categories=categories).codes
        return {
            self.CATEGORICAL_MAPPING_KEY: categories.to_numpy(),
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }


#: how to predict cells whose labels a trained classifier cannot register
_QUERY_HINT = (
    "Data attached to a trained classifier (e.g. by load(dir_path, adata)) are data it can go on "
    "training on, so every cell needs one of the model's classes. To predict other cells, pass them "
    "to predict() or annotate() (after load(dir_path, adata=False) for a saved model)."
)


def _as_strings(column: pd.Series) -> np.ndarray:
    """The labels as strings (missing labels stay missing)."""
    values = column.astype(object).to_numpy()
    missing = pd.isna(values)
    out = values.astype(str).astype(object)
    out[missing] = np.nan
    return out


def clean_labels(column: pd.Series, key: str) -> pd.Categorical:
    """The labels of ``column`` as a categorical of string class names (``column`` is not changed).

    Mixed types become strings and unused categories are dropped, each with a
    :class:`UserWarning` (see :class:`LabelsField`).

    Parameters
    ----------
    column
        Labels of each cell.
    key
        Name of the column, for messages.
    """
    if isinstance(column.dtype, pd.CategoricalDtype):
        categories = column.cat.categories
        unused = categories.difference(pd.unique(column.dropna()))
        if len(unused):
            warnings.warn(
                f"adata.obs['{key}'] has {len(unused)} categor(ies) without cells "
                f"({list(unused[:5])}); they are left out of the classes (the column is not changed).",
                UserWarning,
                stacklevel=4,
            )
        categories = categories.difference(unused, sort=False)
        order = list(categories)
    else:
        order = None
    present = column.dropna()
    types = {type(v) for v in (present.cat.categories if order is not None else present)}
    if len({str in t.__mro__ for t in types}) > 1:
        warnings.warn(
            f"adata.obs['{key}'] mixes strings and other types ({sorted(t.__name__ for t in types)}); "
            "the labels are used as strings (the column is not changed).",
            UserWarning,
            stacklevel=4,
        )
    values = _as_strings(column)
    if order is not None:
        names = pd.Index([str(c) for c in order]).unique()
    else:
        ordered = pd.unique(present)
        try:
            ordered = sorted(ordered)
        except TypeError:  # mixed types
            ordered = sorted(str(v) for v in ordered)
        names = pd.Index([str(v) for v in ordered]).unique()
    return pd.Categorical(values, categories=names)


class AccessibilityLayerField(LayerField):
    """Chromatin accessibility field: checks the values and that the modality holds peaks.

    NaN/inf, negative values and duplicated peak names raise a :class:`ValueError`; peaks with
    no accessible cell give a :class:`UserWarning` (they carry no information and only cost
    memory and time). A modality that does not look like accessibility (see
    :func:`check_looks_like_accessibility`), e.g. CITE-seq protein counts, raises a
    :class:`ValueError`.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    layer
        Layer holding the matrix; ``None`` for ``.X``.
    modality
        Name of the modality in the MuData, for messages.
    """

    def __init__(self, registry_key: str, layer: str | None, modality: str | None = None) -> None:
        super().__init__(registry_key, layer, is_count_data=False, correct_data_format=True)
        self.modality = modality

    def register_field(self, adata: AnnData) -> dict:
        """Register the field after validating the matrix.

        Parameters
        ----------
        adata
            The AnnData to register.
        """
        check_var_names(adata, what="peaks")
        state = super().register_field(adata)
        where = describe_location(self.attr_key)
        if self.modality is not None:
            where = f"{where} of modality {self.modality!r}"
        n_accessible, large_share = _scan_accessibility(self.get_field_data(adata), where)
        check_looks_like_accessibility(adata.var, large_share, where)
        _warn_never_accessible(n_accessible, where, adata.var_names)
        return state


#: non-zero accessibility values above this are rare in peak or bin count matrices (0/1, or
#: counts of cut sites: mostly 1 and 2)
SMALL_ACCESSIBILITY_COUNT = 4
#: share of the non-zero values above SMALL_ACCESSIBILITY_COUNT from which a matrix does not look
#: like accessibility (MOp SNARE-seq2 ATAC: 0.0002%; BMMC CITE-seq ADT: 65%, its RNA: 26%)
MAX_LARGE_COUNT_SHARE = 0.05
#: fewer features than this are unusual for accessibility (CITE-seq panels hold ~100-200 proteins)
MIN_PEAKS = 1000
#: region names such as ``chr1:100-200``, ``chr1-100-200``, ``chr1_100_200``, ``GL000194.1:5-9``
PEAK_NAME = re.compile(r"^[\w.]+?[:_-]\d+[-_]\d+$")
_COORDINATE_COLUMNS = (
    ("chrom", "chr", "chromosome", "seqnames", "seqname"),
    ("start", "chromstart"),
    ("end", "chromend", "stop"),
)


def check_accessibility(x, where: str, var_names, *, warn_empty: bool = True) -> None:
    """Raise on NaN/inf or negative accessibility; warn about peaks accessible in no cell."""
    n_accessible, _ = _scan_accessibility(x, where)
    if warn_empty:
        _warn_never_accessible(n_accessible, where, var_names)


def _scan_accessibility(x, where: str) -> tuple[np.ndarray, float]:
    """Cells in which each peak is accessible, and the share of the non-zero values above
    :data:`SMALL_ACCESSIBILITY_COUNT` (0 without non-zeros); raises on NaN/inf or negatives.
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {x.shape}).")
    n_accessible = np.zeros(x.shape[1], dtype=np.int64)
    n_nonzero = n_large = 0
    for _, block in iter_row_blocks(x):
        values = block.data if sparse.issparse(block) else block
        if values.size and not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinite values.")
        if values.size and (values < 0).any():
            raise ValueError(f"{where} contains negative values; accessibility must be counts or 0/1.")
        n_accessible += np.asarray((block > 0).sum(axis=0)).ravel()
        n_nonzero += int(np.count_nonzero(values))
        n_large += int((values > SMALL_ACCESSIBILITY_COUNT).sum())
    return n_accessible, (n_large / n_nonzero if n_nonzero else 0.0)


def _warn_never_accessible(n_accessible: np.ndarray, where: str, var_names) -> None:
    never = np.flatnonzero(n_accessible == 0)
    if never.size:
        warnings.warn(
            f"{never.size} of {len(n_accessible)} peaks in {where} are accessible in no cell "
            f"(e.g. {list(var_names[never[:3]])}); they carry no information. Consider removing them, "
            "e.g. with `sc.pp.filter_genes(atac, min_cells=1)`.",
            UserWarning,
            stacklevel=3,
        )


def has_peak_coordinates(var: pd.DataFrame) -> bool:
    """Whether features carry genomic coordinates: region names or chrom/start/end columns."""
    columns = {str(column).lower() for column in var.columns}
    if all(any(name in columns for name in names) for names in _COORDINATE_COLUMNS):
        return True
    names = var.index.astype(str)
    return len(names) > 0 and names.str.match(PEAK_NAME).mean() > 0.5


def check_looks_like_accessibility(var: pd.DataFrame, large_share: float, where: str) -> None:
    """Raise when a matrix registered as accessibility looks like another assay.

    Accessibility has peak coordinates (region names or ``var`` columns chrom/start/end), values
    that are mostly 0/1 or small counts, and many features. Features without coordinates that
    also have large counts or fewer than :data:`MIN_PEAKS` features (as CITE-seq protein panels
    do) raise; peaks with coordinates but large counts only warn.

    Parameters
    ----------
    var
        The modality's ``var`` (its index holds the feature names).
    large_share
        Share of the non-zero values above :data:`SMALL_ACCESSIBILITY_COUNT`.
    where
        Where the matrix lives, for messages.
    """
    large = large_share > MAX_LARGE_COUNT_SHARE
    counts = f"{large_share:.0%} of its non-zero values are above {SMALL_ACCESSIBILITY_COUNT}"
    if has_peak_coordinates(var):
        if large:
            warnings.warn(
                f"{where} has peak coordinates, but {counts}; accessibility is mostly 0/1 or small "
                "counts. Check that this modality holds chromatin accessibility.",
                UserWarning,
                stacklevel=3,
            )
        return
    problems = []
    if large:
        problems.append(f"{counts} (accessibility is mostly 0/1 or small counts)")
    if len(var) < MIN_PEAKS:
        problems.append(f"it has only {len(var)} features (accessibility has thousands of peaks)")
    if not problems:
        return
    examples = [str(name) for name in var.index[:3]]
    raise ValueError(
        f"{where} does not look like chromatin accessibility: its features {examples} have no "
        "peak coordinates (names like 'chr1:100-200', 'chr1-100-200' or 'chr1_100_200', or "
        f"var columns chrom/start/end), and {' and '.join(problems)}. This looks like another "
        "assay, e.g. CITE-seq protein counts (ADT) or gene expression. Translator.setup_mudata "
        "needs paired RNA and ATAC: name the ATAC modality with modalities={'atac_layer': ...}; "
        "if these are peaks, add their coordinates as var columns chrom, start and end."
    )
