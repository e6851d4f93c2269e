"""Recovery of planted gene modules by the units of a representation."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment


def module_recovery(impact: pd.DataFrame, modules: Sequence[str]) -> pd.DataFrame:
    """Match modules to distinct units by impact and say which units single their module out.

    Each module is assigned its own unit so that the summed impact of the assigned pairs is
    largest (Hungarian algorithm, :func:`scipy.optimize.linear_sum_assignment`). A module is
    *recovered* when, in its unit's column, it has a larger impact than every other gene set
    of ``impact`` (other modules, and any further sets such as marker genes).

    Parameters
    ----------
    impact
        Gene sets x units; larger means a stronger tie. Prefer the unscaled
        ``adata.uns["moduleae"]["mean_saliency"]`` of :func:`scsalient.tl.gene_set_impact` to
        its ``impact``: after the per-unit min-max scaling every unit's top set scores 1, so a
        unit that barely reads a module ties with one that reads it alone. Whether a module is
        recovered (the top set of its unit) is the same for both.
    modules
        Rows of ``impact`` that are planted modules.

    Returns
    -------
    DataFrame indexed by module with ``unit`` (the matched unit, empty if there are fewer units
    than modules), ``impact`` (of the module on that unit), ``rank`` (of the module among all
    sets in that unit's column, 1 = largest) and ``recovered`` (``rank == 1``). The fraction
    recovered is ``result["recovered"].mean()``.

    Examples
    --------
    >>> import pandas as pd
    >>> from scsalient.metrics import module_recovery
    >>> impact = pd.DataFrame(
    ...     [[0.9, 0.1], [0.2, 0.8], [0.3, 0.4]], index=["m0", "m1", "markers"], columns=["u0", "u1"]
    ... )
    >>> module_recovery(impact, ["m0", "m1"])["recovered"].tolist()
    [True, True]
    """
    modules = [str(module) for module in modules]
    missing = [module for module in modules if module not in impact.index]
    if missing:
        raise KeyError(f"Modules {missing} are not rows of `impact`.")
    if not modules:
        raise ValueError("`modules` is empty.")
    values = impact.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("`impact` contains NaN.")
    rows = impact.index.get_indexer(modules)
    module_rows, units = linear_sum_assignment(values[rows], maximize=True)
    result = pd.DataFrame(
        {"unit": "", "impact": np.nan, "rank": np.nan, "recovered": False},
        index=pd.Index(modules, name="module"),
    )
    for i, unit in zip(module_rows, units, strict=True):
        column = values[:, unit]
        own = column[rows[i]]
        rank = 1 + int((column > own).sum())
        result.iloc[i] = [
            str(impact.columns[unit]),
            own,
            rank,
            rank == 1 and bool((column == own).sum() == 1),
        ]
    result["recovered"] = result["recovered"].astype(bool)
    return result


#: largest mean pairwise correlation of the units' gene-set impact for units that read separate programs
MAX_IMPACT_CORRELATION = 0.2
#: largest fraction of the units one gene set may top (at least one unit is always allowed)
MAX_TOP_SET_FRACTION = 0.1


def unit_separation(impact: pd.DataFrame) -> dict[str, float | int | str | bool]:
    """How separately the units read gene sets: impact correlation between units, most frequent top set.

    Units that read separate programs have gene-set profiles that do not correlate, and no
    gene set is the most impacted set of many of them. Columns without variance (units that
    read nothing) are left out.

    Parameters
    ----------
    impact
        Gene sets x units (e.g. ``adata.uns["moduleae"]["impact"]`` of
        :func:`scsalient.tl.gene_set_impact`).

    Returns
    -------
    dict with ``mean_correlation`` (mean Pearson correlation over all pairs of units of their
    impact columns), ``top_set`` (the gene set that is the most impacted set of the most
    units), ``top_set_units`` (of how many), ``n_units`` (units scored) and ``separate``
    (``mean_correlation <= 0.2`` and ``top_set_units <= max(1, 10% of n_units)``).

    Examples
    --------
    >>> import pandas as pd
    >>> from scsalient.metrics import unit_separation
    >>> impact = pd.DataFrame([[1.0, 0.0, 0.2], [0.1, 1.0, 0.0], [0.0, 0.3, 1.0]], index=["a", "b", "c"])
    >>> unit_separation(impact)["top_set_units"]
    1
    """
    values = impact.to_numpy(dtype=np.float64)
    if np.isnan(values).any():
        raise ValueError("`impact` contains NaN.")
    live = values.std(axis=0) > 0
    values = values[:, live]
    n_units = int(values.shape[1])
    if n_units == 0 or values.shape[0] < 2:
        raise ValueError("`impact` needs at least two gene sets and one unit whose impact varies.")
    if n_units > 1:
        correlation = np.corrcoef(values.T)
        mean_correlation = float(correlation[np.triu_indices(n_units, 1)].mean())
    else:
        mean_correlation = 0.0
    tops = pd.Series(np.asarray(impact.index)[values.argmax(axis=0)]).value_counts(sort=True)
    top_set, top_units = str(tops.index[0]), int(tops.iloc[0])
    allowed = max(1, int(np.floor(MAX_TOP_SET_FRACTION * n_units + 1e-9)))
    return {
        "mean_correlation": mean_correlation,
        "top_set": top_set,
        "top_set_units": top_units,
        "n_units": n_units,
        "separate": bool(mean_correlation <= MAX_IMPACT_CORRELATION and top_units <= allowed),
    }


def matched_unit_correlation(
    first: pd.DataFrame | np.ndarray, second: pd.DataFrame | np.ndarray
) -> np.ndarray:
    """Correlation of each unit of one run with its matched unit of another (stability across runs).

    Units of two runs (e.g. two seeds) are matched one to one so that the summed Pearson
    correlation of their gene profiles (columns, e.g. saliency) is largest (Hungarian
    algorithm); a unit whose column has no variance correlates 0.

    Parameters
    ----------
    first, second
        Genes x units of the two runs, the same genes in the same order.

    Returns
    -------
    The correlations of the matched pairs, largest first (``min(n_units)`` values).

    Examples
    --------
    >>> import numpy as np
    >>> from scsalient.metrics import matched_unit_correlation
    >>> a = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.2]])
    >>> matched_unit_correlation(a, a[:, ::-1]).round(2).tolist()
    [1.0, 1.0]
    """
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.ndim != 2 or second.ndim != 2 or first.shape[0] != second.shape[0]:
        raise ValueError(
            f"Need two genes x units matrices over the same genes, got {first.shape} and {second.shape}."
        )
    n_first = first.shape[1]
    with np.errstate(invalid="ignore", divide="ignore"):
        correlation = np.corrcoef(first.T, second.T)[:n_first, n_first:]
    correlation = np.nan_to_num(correlation, nan=0.0)
    rows, cols = linear_sum_assignment(correlation, maximize=True)
    return np.sort(correlation[rows, cols])[::-1]
