"""Checks on expression matrices and labels, shared by every model."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

InputKind = Literal["counts", "lognorm"]

#: largest value of log-normalised input: log1p(CP10k) stays below ~9.3, log1p(CPM) below
#: ~13.9 and log2(CPM + 1) below ~19.9; non-integer values beyond are taken as counts.
MAX_LOGNORM_VALUE = 20.0


def iter_row_blocks(x, block_size: int = 8192) -> Iterator[tuple[int, np.ndarray | sparse.csr_matrix]]:
    """Yield ``(start, block)`` row blocks of a dense, sparse, or on-disk (backed) matrix.

    Only one block is held in memory at a time; on-disk datasets are read block by block.
    """
    n = x.shape[0]
    for start in range(0, n, block_size):
        block = x[start : min(start + block_size, n)]
        if sparse.issparse(block):
            block = sparse.csr_matrix(block)
        else:
            block = np.asarray(block)
        yield start, block


def _values(block) -> np.ndarray:
    return block.data if sparse.issparse(block) else block


def describe_location(layer: str | None) -> str:
    """Human-readable location of the expression matrix (``adata.X`` or ``adata.layers[...]``)."""
    return "adata.X" if layer is None else f"adata.layers['{layer}']"


#: a cell total is "common" when it lies within this relative distance of the median total
COMMON_TOTAL_TOLERANCE = 0.01
#: ... for this fraction of the cells
COMMON_TOTAL_SHARE = 0.9
#: non-integer values whose largest is this many times their median and whose skewness is
#: above :data:`COUNT_LIKE_SKEW` are taken as counts. Measured on non-zero values: real
#: log-normalised files (Spectra TILs, Xin, Wang, Puram, Tirosh pancreas/tumour, scanpy's
#: pbmc68k_reduced().raw) and log1p of simulated counts: ratio 1.1-10, skewness -1.2-2.0;
#: simulated expected, downsampled and ambient-corrected counts with a maximum of 14-37:
#: ratio 30-70, skewness 3.5-5.0.
COUNT_LIKE_RATIO = 20.0
COUNT_LIKE_SKEW = 2.5
#: non-zero values kept per block of rows for the distribution of values
SAMPLE_PER_BLOCK = 20_000


@dataclass
class ExpressionScan:
    """What one pass over an expression matrix found (see :func:`scan_expression`)."""

    integer: bool
    max_value: float
    zero_cells: np.ndarray
    totals: np.ndarray
    expm1_totals: np.ndarray
    sample: np.ndarray


def scan_expression(x, where: str) -> ExpressionScan:
    """Read an expression matrix block by block, raising on NaN/inf or negative values.

    Every value is checked; the row totals of ``x`` and of ``expm1(x)`` are exact, and the
    distribution of non-zero values is kept as a sample of up to :data:`SAMPLE_PER_BLOCK` per
    block of rows (seeded, so the result is reproducible).

    Parameters
    ----------
    x
        Cells x genes matrix (dense, sparse, or a backed on-disk dataset).
    where
        Where the matrix lives, used in error messages (e.g. ``"adata.X"``).
    """
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {x.shape}).")
    rng = np.random.default_rng(0)
    integer, max_value = True, 0.0
    totals, expm1_totals, samples = [], [], []
    for _, block in iter_row_blocks(x):
        values = _values(block)
        if values.size:
            if not np.isfinite(values).all():
                raise ValueError(f"{where} contains NaN or infinite values; remove or impute them first.")
            if (values < 0).any():
                raise ValueError(
                    f"{where} contains negative values (minimum {values.min():.3g}). scsalient models take "
                    "raw counts or log1p-normalised expression, not scaled or centred data."
                )
            max_value = max(max_value, float(values.max()))
            if integer and not _all_integer(values):
                integer = False
        totals.append(np.asarray(block.sum(axis=1), dtype=np.float64).ravel())
        if max_value <= MAX_LOGNORM_VALUE:
            expm1_totals.append(_expm1_totals(block))
        nonzero = values[values > 0].astype(np.float64) if values.size else np.zeros(0)
        if nonzero.size > SAMPLE_PER_BLOCK:
            nonzero = rng.choice(nonzero, SAMPLE_PER_BLOCK, replace=False)
        samples.append(nonzero)
    totals_ = np.concatenate(totals)
    complete = not integer and max_value <= MAX_LOGNORM_VALUE and len(expm1_totals) == len(totals)
    return ExpressionScan(
        integer=integer,
        max_value=max_value,
        zero_cells=np.flatnonzero(totals_ == 0),
        totals=totals_,
        expm1_totals=np.concatenate(expm1_totals) if complete else np.zeros(0),
        sample=np.concatenate(samples),
    )


def _all_integer(values: np.ndarray) -> bool:
    """Whether every (finite) value is a whole number.

    ``floor(v) == v`` rather than ``v % 1 == 0``: the same answer for finite values, at a small
    fraction of the cost (the modulo dominated the scan of a query at prediction time).
    """
    if values.dtype.kind != "f":  # integer and boolean dtypes hold whole numbers only
        return True
    return bool(np.array_equal(np.floor(values), values))


def _expm1_totals(block) -> np.ndarray:
    if sparse.issparse(block):
        block = block.copy()
        block.data = np.expm1(block.data.astype(np.float64))
        return np.asarray(block.sum(axis=1)).ravel()
    return np.expm1(np.asarray(block, dtype=np.float64)).sum(axis=1)


def common_total(totals: np.ndarray) -> float | None:
    """The total that the (non-zero) cell totals share, or ``None`` if they do not share one.

    Needs at least three cells; shared means :data:`COMMON_TOTAL_SHARE` of them lie within
    :data:`COMMON_TOTAL_TOLERANCE` of the median.
    """
    totals = totals[totals > 0]
    if len(totals) < 3:
        return None
    median = float(np.median(totals))
    close = np.abs(totals / median - 1.0) <= COMMON_TOTAL_TOLERANCE
    return median if close.mean() >= COMMON_TOTAL_SHARE else None


def _skewness(values: np.ndarray) -> float:
    sd = values.std()
    return float(((values - values.mean()) ** 3).mean() / sd**3) if sd > 0 else 0.0


@dataclass
class InputDecision:
    """What an expression matrix was taken to hold, and why."""

    kind: InputKind
    reason: str

    @property
    def obvious(self) -> bool:
        """Integer counts: nothing the user needs to be told."""
        return self.reason == "integer counts"


def decide_input_kind(scan: ExpressionScan) -> InputDecision:
    """Decide whether scanned expression holds counts or log-normalised values.

    * Integer values: counts.
    * Non-integer values whose ``expm1`` rows share a total (``log1p`` of CP10k, CPM, ...):
      log-normalised.
    * Non-integer values whose rows share a total (normalised, not log-transformed): counts,
      as the model's own normalisation leaves them as they are.
    * Non-integer values above :data:`MAX_LOGNORM_VALUE` (no log scale reaches that): counts,
      e.g. expected counts (RSEM, salmon) or ambient-corrected counts.
    * Otherwise the distribution of non-zero values decides: heavy-tailed like counts (largest
      over median above :data:`COUNT_LIKE_RATIO` and skewness above :data:`COUNT_LIKE_SKEW`):
      counts; compressed like log data: log-normalised.
    """
    if scan.integer:
        return InputDecision("counts", "integer counts")
    if len(scan.expm1_totals):
        total = common_total(scan.expm1_totals)
        if total is not None:
            return InputDecision("lognorm", f"the rows of expm1(x) all sum to {total:.4g}: log1p-normalised")
    total = common_total(scan.totals)
    if total is not None:
        return InputDecision(
            "counts",
            f"the rows all sum to {total:.4g}: normalised but not log-transformed, so taken as "
            "non-integer counts (normalising them again changes nothing)",
        )
    if scan.max_value > MAX_LOGNORM_VALUE:
        return InputDecision(
            "counts",
            f"values reach {scan.max_value:.4g}, beyond any log scale: taken as non-integer counts "
            "(e.g. expected or ambient-corrected counts)",
        )
    sample = scan.sample
    ratio = float(sample.max() / np.median(sample)) if sample.size else 0.0
    skew = _skewness(sample)
    shape = f"non-zero values up to {scan.max_value:.3g}, largest / median {ratio:.3g}, skewness {skew:.2f}"
    if ratio > COUNT_LIKE_RATIO and skew > COUNT_LIKE_SKEW:
        return InputDecision("counts", f"{shape}, heavy-tailed like counts: taken as non-integer counts")
    return InputDecision("lognorm", f"{shape}, compressed like log-scale data: taken as log-normalised")


def report_input_kind(decision: InputDecision, where: str, *, warn: bool = True) -> None:
    """Say what was decided: a :class:`UserWarning` unless the data are integer counts."""
    treatment = {
        "counts": "normalised inside the model to log1p(CP10k)",
        "lognorm": "used as given",
    }[decision.kind]
    message = f"{where} holds non-integer values; {decision.reason}. They are {treatment}."
    if decision.obvious:
        logger.info("%s holds integer counts: %s.", where, treatment)
    elif warn:
        if decision.kind == "counts":
            message += " If these are log-normalised values, set the model up on raw counts instead."
        else:
            message += " If these are counts, set the model up on them as integers or as a counts layer."
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        logger.info(message)


def raise_on_zero_cells(
    zero_cells: np.ndarray, where: str, obs_names: pd.Index | None, *, query: bool = False
) -> None:
    """Raise a :class:`ValueError` naming the all-zero cells, if there are any.

    Parameters
    ----------
    zero_cells
        Rows without a non-zero value.
    where
        Where the matrix lives, for the message.
    obs_names
        Cell names, to name the cells in the message.
    query
        The matrix is query data aligned to a model's genes: its empty cells may express
        genes the model does not know, and the message says so.
    """
    if len(zero_cells):
        names = list(obs_names[zero_cells[:5]]) if obs_names is not None else zero_cells[:5].tolist()
        if query:
            raise ValueError(
                f"{where} has {len(zero_cells)} query cell(s) with no expression in any of the model's "
                f"genes (e.g. {names}): all-zero, or expressing only genes the model does not know. "
                "This model cannot read them out; remove them from the query first."
            )
        raise ValueError(
            f"{where} has {len(zero_cells)} all-zero cell(s) (e.g. {names}); "
            "filter them first, e.g. with `sc.pp.filter_cells(adata, min_counts=1)`."
        )


def inspect_expression(
    x, where: str, obs_names: pd.Index | None = None, *, warn: bool = True, query: bool = False
) -> InputKind:
    """Validate an expression matrix and decide whether it holds counts or log-normalised values.

    The matrix is read block by block (a backed matrix is never loaded at once). The decision
    (see :func:`decide_input_kind`) is logged for integer counts and otherwise given as a
    :class:`UserWarning` (or logged, with ``warn=False``).

    Parameters
    ----------
    x
        Cells x genes matrix (dense, sparse, or a backed on-disk dataset).
    where
        Where the matrix lives, used in messages (e.g. ``"adata.X"``).
    obs_names
        Cell names, used to name all-zero cells in the error message.
    warn
        Warn about a decision that is not integer counts (otherwise it is only logged).
    query
        ``x`` is query data aligned to a model's genes (see :func:`raise_on_zero_cells`).

    Returns
    -------
    ``"counts"`` (integer or non-integer counts, normalised by the models) or ``"lognorm"``.

    Raises
    ------
    ValueError
        On NaN or infinite values, negative values, or all-zero cells.
    """
    scan = scan_expression(x, where)
    raise_on_zero_cells(scan.zero_cells, where, obs_names, query=query)
    decision = decide_input_kind(scan)
    report_input_kind(decision, where, warn=warn)
    return decision.kind


#: fewest cells a classifier is trained on
MIN_TRAINING_CELLS = 10


def check_n_cells(n_obs: int, what: str = "a model") -> None:
    """Raise a clear :class:`ValueError` when data hold fewer than :data:`MIN_TRAINING_CELLS` cells.

    Parameters
    ----------
    n_obs
        Number of cells of the training data.
    what
        What is trained, for the message.
    """
    if n_obs < MIN_TRAINING_CELLS:
        raise ValueError(
            f"The data hold {n_obs} cell(s); {what} needs at least {MIN_TRAINING_CELLS} to train and "
            "validate on."
        )


def check_labels(adata: AnnData, labels_key: str) -> None:
    """Raise a clear :class:`ValueError` when a labels column cannot train a classifier.

    The column must exist, have no missing labels and at least two classes, and the data must
    hold at least :data:`MIN_TRAINING_CELLS` cells.
    """
    check_n_cells(adata.n_obs, "a classifier")
    if labels_key not in adata.obs:
        raise KeyError(f"labels_key '{labels_key}' is not a column of adata.obs.")
    labels = adata.obs[labels_key]
    n_missing = int(labels.isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs['{labels_key}'] has {n_missing} missing (NaN) label(s); "
            "drop those cells or give them a label first."
        )
    n_classes = labels.nunique()
    if n_classes < 2:
        raise ValueError(
            f"adata.obs['{labels_key}'] has {n_classes} class(es); a classifier needs at least two."
        )


def check_batch_key(adata: AnnData, batch_key: str | None) -> None:
    """Raise a clear error when a batch column is absent or incomplete (``None`` passes)."""
    if batch_key is None:
        return
    if batch_key not in adata.obs:
        raise KeyError(f"batch_key '{batch_key}' is not a column of adata.obs.")
    n_missing = int(adata.obs[batch_key].isna().sum())
    if n_missing:
        raise ValueError(
            f"adata.obs['{batch_key}'] has {n_missing} missing (NaN) batch(es); "
            "give every cell a batch (donor, sample) first."
        )


def check_var_names(adata: AnnData, what: str = "genes") -> None:
    """Raise a clear :class:`ValueError` when ``adata.var_names`` has duplicates.

    Query data are matched to a model's genes by name, which a duplicated name makes ambiguous.
    """
    names = pd.Index(adata.var_names)
    if names.has_duplicates:
        dup = names[names.duplicated()].unique()
        raise ValueError(
            f"adata.var_names has {len(dup)} duplicated name(s) (e.g. {dup[:5].tolist()}): {what} are "
            "matched by name, so names must be unique. Run `adata.var_names_make_unique()` first."
        )
