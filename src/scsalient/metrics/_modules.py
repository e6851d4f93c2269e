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
        Gene sets x units (e.g. ``adata.uns["moduleae"]["impact"]`` of
        :func:`scsalient.tl.gene_set_impact`); larger means a stronger tie.
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
