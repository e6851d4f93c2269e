"""Simulation of single-cell count data with planted, known ground truth."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from numbers import Integral, Real
from typing import Any, Literal

import mudata
import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData
from mudata import MuData

from scsalient._constants import SimulationKeys

from ._simulate_atac import _Regulation, simulate_atac

# Keys of the planted truth (see ``SimulationKeys``).
_MODULE_ACTIVITY_KEY = SimulationKeys.MODULE_ACTIVITY
_TYPE_EFFECT_KEY = SimulationKeys.TYPE_EFFECT
_DONOR_EFFECT_KEY = SimulationKeys.DONOR_EFFECT

_MODALITIES = ("rna", "rna+atac")

# Fixed shape constants of the generative model (documented in ``simulate``).
_BASELINE_SD = 1.0  # sd of the log baseline of background genes
_SIGNAL_BASELINE_SD = 0.5  # sd of the log baseline of marker and module genes
_HOUSEKEEPING_SD = 0.25  # sd of the log baseline of housekeeping genes around log(fold)
_SHIFT_FRACTION = 0.1  # fraction of background genes shifted per cell type
_SHIFT_SD = 0.25  # sd of those shifts, in units of log(marker_fold)
_SHIFT_MAX = 0.5  # their absolute bound, in units of log(marker_fold)
_ACTIVITY_CONCENTRATION = 4.0  # Beta concentration of module activities
_ACTIVITY_HIGH = 0.75  # mean activity of a module in its associated cell type
_ACTIVITY_LOW = 0.25  # ... in the other cell types
_ACTIVITY_FREE = 0.5  # mean activity of a module that is not type-associated
_CHUNK_ENTRIES = 2**21  # cells x genes entries sampled at once
_MAX_THREADS = 8  # threads sampling blocks of cells in parallel


@dataclass(frozen=True)
class _CellDesign:
    """Per-cell latent variables shared by every modality."""

    cell_type: np.ndarray  # int, (n_cells,)
    donor: np.ndarray  # int, (n_cells,)
    module_activity: np.ndarray  # float64, (n_cells, n_modules)
    module_type_means: np.ndarray  # float64, (n_cell_types, n_modules)
    module_cell_type: np.ndarray  # int, (n_modules,), -1 for modules not tied to a type
    library_size: np.ndarray  # float64, (n_cells,)


@dataclass(frozen=True)
class _RNASimulation:
    """Counts and planted gene-level truth of the RNA modality."""

    counts: sp.csr_matrix  # float32 integer counts, (n_cells, n_genes)
    marker_of: np.ndarray  # int, (n_genes,), cell type index or -1
    housekeeping: np.ndarray  # bool, (n_genes,)
    module: np.ndarray  # int, (n_genes,), module index or -1
    type_effect: np.ndarray  # float64, (n_cell_types, n_genes), log scale
    donor_effect: np.ndarray  # float64, (n_donors, n_genes), log scale
    baseline: np.ndarray  # float64, (n_genes,), log scale


def simulate(
    n_cells: int = 2000,
    n_genes: int = 500,
    n_cell_types: int = 5,
    n_donors: int = 3,
    *,
    n_markers: int = 10,
    marker_fold: float = 4.0,
    n_housekeeping: int = 20,
    housekeeping_fold: float = 8.0,
    n_modules: int = 4,
    module_size: int = 20,
    module_fold: float = 3.0,
    donor_effect: float = 0.2,
    library_size: float = 2000.0,
    library_sd: float = 0.4,
    dispersion: float = 5.0,
    cell_type_proportions: Sequence[float] | None = None,
    modalities: Literal["rna", "rna+atac"] = "rna",
    n_peaks: int = 1000,
    n_links: int = 50,
    link_fold: float = 4.0,
    n_type_peaks: int = 20,
    peak_capture: float = 0.6,
    seed: int = 0,
) -> AnnData | MuData:
    r"""Simulate single-cell counts with planted cell types, markers, gene modules and donor effects.

    Every signal a model might recover is planted and stored next to the counts: the marker genes
    of each cell type, housekeeping genes that are highly expressed everywhere but specific to
    nothing, gene modules (programs) with a continuous per-cell activity, and per-donor shifts.
    The result is fully determined by the arguments, ``seed`` included.

    Parameters
    ----------
    n_cells
        Number of cells.
    n_genes
        Number of genes. Must hold the marker, housekeeping and module genes, which are disjoint:
        ``n_cell_types * n_markers + n_housekeeping + n_modules * module_size <= n_genes``. The
        remaining genes are background genes.
    n_cell_types
        Number of cell types, named ``"type_0"``, ``"type_1"``, ...
    n_donors
        Number of donors, named ``"donor_0"``, ``"donor_1"``, ...
    n_markers
        Number of marker genes per cell type; the marker sets of different types are disjoint.
    marker_fold
        Fold up-regulation (at least 1) of a cell type's markers in that type, relative to the
        other types. A value of 1 plants no cell-type signal at all (a null simulation).
    n_housekeeping
        Number of housekeeping genes: highly expressed, at the same level in every cell type.
    housekeeping_fold
        Expression (at least 1) of housekeeping genes relative to a typical background gene.
    n_modules
        Number of gene modules (programs) with a continuous per-cell activity in :math:`[0, 1]`.
    module_size
        Number of genes per module; modules are disjoint.
    module_fold
        Fold change (at least 1) of a module's genes at activity 1, relative to activity 0.
    donor_effect
        Standard deviation of the per-donor, per-gene shifts of the log mean; 0 plants none.
    library_size
        Mean total counts per cell.
    library_sd
        Standard deviation of the log library size.
    dispersion
        Inverse dispersion :math:`\theta` of the negative binomial; ``numpy.inf`` gives Poisson
        counts.
    cell_type_proportions
        Fraction of cells of each cell type: non-negative, one per type, summing to 1. ``None``
        gives equal proportions.
    modalities
        ``"rna"`` returns an :class:`~anndata.AnnData` of gene counts; ``"rna+atac"`` a
        :class:`~mudata.MuData` with the same RNA counts (plus the effect of regulatory peaks) and
        paired binary chromatin accessibility of the same cells (see *Paired accessibility* below).
    n_peaks
        Number of peaks (``"rna+atac"`` only), regulatory and cell-type peaks included.
    n_links
        Number of planted regulatory peaks, each driving one gene (``"rna+atac"`` only).
    link_fold
        Fold change (at least 1) of a regulated gene's mean when its regulatory peak is open.
    n_type_peaks
        Number of cell-type-specific peaks per cell type (``"rna+atac"`` only).
    peak_capture
        Mean fraction of open peaks observed per cell, in :math:`(0, 1]` (``"rna+atac"`` only).
    seed
        Seed of :func:`numpy.random.default_rng`, the only source of randomness.

    Returns
    -------
    adata
        With ``modalities="rna"``: counts of ``n_cells`` cells x ``n_genes`` genes with the planted
        truth (below). With ``modalities="rna+atac"``: a :class:`~mudata.MuData` with modalities
        ``"rna"`` (the AnnData below, whose ``var`` also holds the gene positions ``chrom``,
        ``start``, ``end``) and ``"atac"`` (``X``: float32 0/1 CSR matrix, cells x peaks named
        ``"peak_00000"``, ... in genomic order; ``var``: ``chrom``, ``start``, ``end``,
        ``linked_gene`` (the gene a regulatory peak drives, ``""`` for other peaks), ``peak_type``
        (``"regulatory"``, ``"cell_type"`` or ``"background"``) and ``open_in`` (the cell type a
        peak is mostly open in, ``""`` for background peaks); ``obs["capture"]``: the per-cell
        capture rate; ``obsm["simulation_regulatory_state"]``: the planted 0/1 state of every
        regulatory peak, cells x links in the order of the links table;
        ``varm["simulation_open_probability"]``: peaks x cell types open probabilities).
        ``mdata.obs`` holds ``cell_type`` and ``donor``, and ``mdata.uns["simulation"]`` holds
        ``links`` (:class:`~pandas.DataFrame` with one row per planted link: ``gene``, ``peak``,
        ``distance`` from the gene's TSS to the peak centre in bp, ``home_type``, ``open_home``,
        ``open_other`` and ``log_fold``) and ``params``. The RNA AnnData:

        ``X``
            :class:`scipy.sparse.csr_matrix` of float32 integer counts.
        ``obs_names``, ``var_names``
            ``"cell_00000"``, ... and ``"gene_0000"``, ..., zero-padded to at least 5 and 4 digits.
        ``obs["cell_type"]``, ``obs["donor"]``
            Categorical labels, categories in index order.
        ``obs["library_size"]``
            The planted library size :math:`L_c` (float); the observed total counts scatter around
            it.
        ``var["marker_of"]``
            Name of the cell type a gene is a marker of, ``""`` for other genes (string column).
        ``var["housekeeping"]``
            Whether a gene is a housekeeping gene (bool).
        ``var["module"]``
            Name of the module (``"module_0"``, ...) a gene belongs to, ``""`` for other genes.
        ``varm["simulation_type_effect"]``
            Planted cell-type effects :math:`\delta_{tg}` (float32, genes x cell types, columns in
            category order): the marker log-folds and the mild shifts of background genes.
        ``varm["simulation_donor_effect"]``
            Planted donor effects :math:`\gamma_{dg}` (float32, genes x donors).
        ``obsm["simulation_module_activity"]``
            Planted module activities :math:`a_{cm}` (float32, cells x modules).
        ``uns["simulation"]``
            The planted truth as a dict with ``markers`` (cell type -> list of marker genes),
            ``housekeeping`` (list of genes), ``modules`` (module -> list of genes),
            ``module_cell_type`` (module -> the cell type it is associated with, ``""`` for none),
            ``module_type_means`` (:class:`~pandas.DataFrame` cell types x modules of the expected
            activities :math:`\mu_{tm}`), ``module_activity_key``, ``type_effect_key`` and
            ``donor_effect_key`` (the ``obsm``/``varm`` keys above) and ``params`` (every argument,
            with ``cell_type_proportions`` resolved to a list).

    Raises
    ------
    ValueError
        If an argument is out of range; the message names it.

    Notes
    -----
    Cells :math:`c`, genes :math:`g`, cell types :math:`t`, donors :math:`d`, modules :math:`m`.

    *Cells.* Type :math:`t` receives exactly :math:`n_t` cells, :math:`n \pi_t` rounded by largest
    remainders, in random order. Within each type, cells are spread over donors as evenly as
    possible (at random), so every type occurs in every donor once :math:`n_t \ge` ``n_donors``.

    *Gene roles.* A random permutation of the genes is cut into the marker sets :math:`M_t`, the
    housekeeping set :math:`H`, the module sets :math:`G_m` and the background genes.

    *Baseline.* The log baseline :math:`b_g` is drawn as :math:`\mathcal N(0, 1)` for background
    genes (some rare, some abundant), :math:`\mathcal N(0, 0.5^2)` for marker and module genes (so
    planted signals sit on moderately expressed genes) and
    :math:`\log f_H + \mathcal N(0, 0.25^2)` for housekeeping genes, :math:`f_H` being
    ``housekeeping_fold``.

    *Cell-type effects.* :math:`\delta_{tg} = \log f_M` for :math:`g \in M_t`, :math:`f_M` being
    ``marker_fold``. In addition, each type shifts a random 10% of the background genes by
    :math:`s \sim \mathcal N(0, (0.25 \log f_M)^2)`, clipped to :math:`|s| \le 0.5 \log f_M`, so
    types differ by more than their markers while markers stay the dominant signal. All other
    :math:`\delta_{tg}` are 0; in particular housekeeping genes do not depend on the type.

    *Modules.* Activities are :math:`a_{cm} \sim \mathrm{Beta}(\kappa \mu_{t_c m},
    \kappa (1 - \mu_{t_c m}))` with :math:`\kappa = 4`. For :math:`m <
    \min(` ``n_modules`` :math:`- 1,` ``n_cell_types`` :math:`)`, module :math:`m` is associated
    with type :math:`m`: :math:`\mu_{tm} = 0.75` for :math:`t = m` and 0.25 otherwise. The other
    modules (at least the last one) are not associated with a type: :math:`\mu_{tm} = 0.5`. Active
    modules raise the log mean of their genes by :math:`a_{cm} \log f_A`, :math:`f_A` being
    ``module_fold``.

    *Donors.* :math:`\gamma_{dg} \sim \mathcal N(0, \sigma_D^2)`, :math:`\sigma_D` being
    ``donor_effect``, shift every gene, housekeeping genes included.

    *Counts.* With library sizes :math:`L_c = L \exp(\sigma_L z_c - \sigma_L^2 / 2)`,
    :math:`z_c \sim \mathcal N(0, 1)` (so that :math:`\mathbb E L_c = L`),

    .. math::

        \eta_{cg} &= b_g + \delta_{t_c g} + \sum_m a_{cm} \log f_A \, [g \in G_m]
                     + \gamma_{d_c g}, \\
        \mu_{cg} &= L_c \, \frac{\exp \eta_{cg}}{\sum_{g'} \exp \eta_{cg'}}, \\
        x_{cg} \mid \lambda_{cg} &\sim \mathrm{Poisson}(\lambda_{cg}), \quad
        \lambda_{cg} \sim \mathrm{Gamma}(\text{shape} = \theta, \text{scale} = \mu_{cg} / \theta),

    so :math:`x_{cg}` is negative binomial with mean :math:`\mu_{cg}` and variance
    :math:`\mu_{cg} + \mu_{cg}^2 / \theta`. Folds act on the log mean before the normalization to
    the library size; because a type's up-regulated markers and modules take a larger share of
    its counts, the fold seen in library-normalized data differs slightly from ``marker_fold``
    (by a few percent with the defaults).

    *Paired accessibility* (``modalities="rna+atac"``). Genes get a chromosome (``chr1`` to
    ``chr10``) and a TSS; each of the ``n_links`` regulatory peaks :math:`l` lies within 50 kb of
    the TSS of its gene :math:`g_l`, a background gene expressed at least at the median
    background level. Every cell has a binary regulatory state :math:`r_{cl} \sim
    \mathrm{Bernoulli}(p_{t_c l})` with :math:`p = 0.5` in the link's (random) home type and 0.15
    elsewhere. The state both opens the peak and drives the gene: :math:`\eta_{c g_l}` gains
    :math:`r_{cl} \log f_R`, :math:`f_R` being ``link_fold``, so within a cell type the gene's
    expression still tracks its peak cell by cell. Of the other peaks, ``n_type_peaks`` per type
    are open with probability 0.5 in that type; every other probability is a
    :math:`\mathrm{Beta}(1, 15)` draw per peak, shared by all types. A cell sees an open peak
    with its capture rate :math:`q_c \sim \mathrm{Beta}(10 \bar q, 10 (1 - \bar q))`,
    :math:`\bar q` being ``peak_capture``. Accessibility draws come from a second generator
    seeded with ``[seed, 1]``, so the RNA-only simulation is unchanged by the ATAC arguments.

    Counts are sampled in blocks of cells, in parallel threads; every block draws from its own
    generator, seeded from ``seed`` and the block's position, so the result does not depend on
    the number of threads. 50,000 cells x 2,000 genes take a few seconds.

    Examples
    --------
    >>> import scsalient as ss
    >>> adata = ss.datasets.simulate(n_cells=500, n_genes=300, seed=1)
    >>> adata
    AnnData object with n_obs × n_vars = 500 × 300
        obs: 'cell_type', 'donor', 'library_size'
        var: 'marker_of', 'housekeeping', 'module'
        uns: 'simulation'
        obsm: 'simulation_module_activity'
        varm: 'simulation_type_effect', 'simulation_donor_effect'
    >>> truth = adata.uns["simulation"]
    >>> len(truth["markers"]["type_0"])
    10
    >>> bool((adata[:, truth["markers"]["type_0"]].var["marker_of"] == "type_0").all())
    True
    """
    proportions = _validate(
        n_cells=n_cells,
        n_genes=n_genes,
        n_cell_types=n_cell_types,
        n_donors=n_donors,
        n_markers=n_markers,
        marker_fold=marker_fold,
        n_housekeeping=n_housekeeping,
        housekeeping_fold=housekeeping_fold,
        n_modules=n_modules,
        module_size=module_size,
        module_fold=module_fold,
        donor_effect=donor_effect,
        library_size=library_size,
        library_sd=library_sd,
        dispersion=dispersion,
        cell_type_proportions=cell_type_proportions,
        modalities=modalities,
        n_peaks=n_peaks,
        n_links=n_links,
        link_fold=link_fold,
        n_type_peaks=n_type_peaks,
        peak_capture=peak_capture,
        seed=seed,
    )
    params: dict[str, Any] = {
        "n_cells": int(n_cells),
        "n_genes": int(n_genes),
        "n_cell_types": int(n_cell_types),
        "n_donors": int(n_donors),
        "n_markers": int(n_markers),
        "marker_fold": float(marker_fold),
        "n_housekeeping": int(n_housekeeping),
        "housekeeping_fold": float(housekeeping_fold),
        "n_modules": int(n_modules),
        "module_size": int(module_size),
        "module_fold": float(module_fold),
        "donor_effect": float(donor_effect),
        "library_size": float(library_size),
        "library_sd": float(library_sd),
        "dispersion": float(dispersion),
        "cell_type_proportions": [float(p) for p in proportions],
        "modalities": str(modalities),
        "seed": int(seed),
    }
    regulation = None
    if modalities == "rna+atac":
        params.update(
            n_peaks=int(n_peaks),
            n_links=int(n_links),
            link_fold=float(link_fold),
            n_type_peaks=int(n_type_peaks),
            peak_capture=float(peak_capture),
        )

    rng = np.random.default_rng(params["seed"])
    cells = _simulate_cells(
        rng,
        n_cells=params["n_cells"],
        n_donors=params["n_donors"],
        proportions=proportions,
        n_modules=params["n_modules"],
        library_size=params["library_size"],
        library_sd=params["library_sd"],
    )
    if modalities == "rna+atac":
        regulation = _Regulation(
            rng=np.random.default_rng([params["seed"], 1]),
            cell_type=cells.cell_type,
            n_cell_types=params["n_cell_types"],
            n_links=params["n_links"],
            link_fold=params["link_fold"],
        )
    rna = _simulate_rna(
        rng,
        cells,
        n_genes=params["n_genes"],
        n_cell_types=params["n_cell_types"],
        n_donors=params["n_donors"],
        n_markers=params["n_markers"],
        marker_fold=params["marker_fold"],
        n_housekeeping=params["n_housekeeping"],
        housekeeping_fold=params["housekeeping_fold"],
        module_size=params["module_size"],
        module_fold=params["module_fold"],
        donor_effect=params["donor_effect"],
        dispersion=params["dispersion"],
        regulation=regulation,
    )
    adata = _rna_anndata(cells, rna, params)
    if regulation is None:
        return adata
    atac, links = simulate_atac(
        adata,
        regulation,
        n_peaks=params["n_peaks"],
        n_type_peaks=params["n_type_peaks"],
        peak_capture=params["peak_capture"],
        params=params,
    )
    with mudata.set_options(pull_on_update=False):
        mdata = MuData({"rna": adata, "atac": atac})
    for key in (SimulationKeys.CELL_TYPE, SimulationKeys.DONOR):
        mdata.obs[key] = adata.obs[key].array
    mdata.uns[SimulationKeys.UNS] = {"links": links, "params": params}
    return mdata


def _validate(
    *,
    n_cells: Any,
    n_genes: Any,
    n_cell_types: Any,
    n_donors: Any,
    n_markers: Any,
    marker_fold: Any,
    n_housekeeping: Any,
    housekeeping_fold: Any,
    n_modules: Any,
    module_size: Any,
    module_fold: Any,
    donor_effect: Any,
    library_size: Any,
    library_sd: Any,
    dispersion: Any,
    cell_type_proportions: Any,
    modalities: Any,
    n_peaks: Any,
    n_links: Any,
    link_fold: Any,
    n_type_peaks: Any,
    peak_capture: Any,
    seed: Any,
) -> np.ndarray:
    """Check all arguments of :func:`simulate`; return the resolved cell-type proportions."""
    if not isinstance(modalities, str) or modalities not in _MODALITIES:
        raise ValueError(f"`modalities` must be one of {list(_MODALITIES)}, got {modalities!r}.")

    for name, value, minimum in (
        ("n_cells", n_cells, 1),
        ("n_genes", n_genes, 1),
        ("n_cell_types", n_cell_types, 1),
        ("n_donors", n_donors, 1),
        ("n_markers", n_markers, 0),
        ("n_housekeeping", n_housekeeping, 0),
        ("n_modules", n_modules, 0),
        ("module_size", module_size, 1),
        ("n_peaks", n_peaks, 1),
        ("n_links", n_links, 0),
        ("n_type_peaks", n_type_peaks, 0),
        ("seed", seed, 0),
    ):
        _check_int(name, value, minimum)
    _check_real("peak_capture", peak_capture)
    if not 0 < peak_capture <= 1:
        raise ValueError(f"`peak_capture` must be in (0, 1], got {peak_capture!r}.")

    for name, value in (
        ("marker_fold", marker_fold),
        ("housekeeping_fold", housekeeping_fold),
        ("module_fold", module_fold),
        ("link_fold", link_fold),
    ):
        _check_real(name, value)
        if not value >= 1:
            raise ValueError(f"`{name}` must be a fold change of at least 1, got {value!r}.")
    for name, value in (("donor_effect", donor_effect), ("library_sd", library_sd)):
        _check_real(name, value)
        if not value >= 0:
            raise ValueError(f"`{name}` must be non-negative, got {value!r}.")
    _check_real("library_size", library_size)
    if not library_size > 0:
        raise ValueError(f"`library_size` must be positive, got {library_size!r}.")
    _check_real("dispersion", dispersion, allow_inf=True)
    if not dispersion > 0:
        raise ValueError(f"`dispersion` must be positive (or numpy.inf for Poisson), got {dispersion!r}.")

    n_planted = n_cell_types * n_markers + n_housekeeping + n_modules * module_size
    if n_planted > n_genes:
        raise ValueError(
            f"`n_genes`={n_genes} is too small: the marker, housekeeping and module genes need "
            f"n_cell_types * n_markers + n_housekeeping + n_modules * module_size = "
            f"{n_cell_types} * {n_markers} + {n_housekeeping} + {n_modules} * {module_size} = "
            f"{n_planted} genes."
        )

    if modalities == "rna+atac":
        n_background = n_genes - n_planted
        if n_links > n_background:
            raise ValueError(
                f"`n_links`={n_links} exceeds the {n_background} background genes that regulatory peaks "
                "can drive; lower it or raise `n_genes`."
            )
        if n_links + n_cell_types * n_type_peaks > n_peaks:
            raise ValueError(
                f"`n_peaks`={n_peaks} is too small for n_links + n_cell_types * n_type_peaks = "
                f"{n_links} + {n_cell_types} * {n_type_peaks} peaks."
            )

    if cell_type_proportions is None:
        return np.full(n_cell_types, 1.0 / n_cell_types)
    if isinstance(cell_type_proportions, str | bytes):
        raise ValueError("`cell_type_proportions` must be a sequence of numbers, got a string.")
    try:
        proportions = np.asarray(cell_type_proportions, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`cell_type_proportions` must be a sequence of numbers, got {cell_type_proportions!r}."
        ) from err
    if proportions.shape != (n_cell_types,):
        raise ValueError(
            f"`cell_type_proportions` must hold one value per cell type (n_cell_types={n_cell_types}), "
            f"got shape {proportions.shape}."
        )
    if not np.all(np.isfinite(proportions)) or np.any(proportions < 0):
        raise ValueError(
            f"`cell_type_proportions` must be finite and non-negative, got {proportions.tolist()}."
        )
    if not math.isclose(proportions.sum(), 1.0, rel_tol=0.0, abs_tol=1e-6):
        raise ValueError(f"`cell_type_proportions` must sum to 1, got a sum of {proportions.sum():.6g}.")
    return proportions


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ValueError(f"`{name}` must be an integer, got {value!r}.")
    if value < minimum:
        raise ValueError(f"`{name}` must be at least {minimum}, got {value!r}.")


def _check_real(name: str, value: Any, *, allow_inf: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"`{name}` must be a number, got {value!r}.")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")


def _simulate_cells(
    rng: np.random.Generator,
    *,
    n_cells: int,
    n_donors: int,
    proportions: np.ndarray,
    n_modules: int,
    library_size: float,
    library_sd: float,
) -> _CellDesign:
    """Draw the per-cell latent variables: type, donor, module activities and library size."""
    n_cell_types = len(proportions)

    # Exact type sizes by largest remainders, cells in random order.
    exact = proportions / proportions.sum() * n_cells
    sizes = np.floor(exact).astype(np.int64)
    remainder_order = np.argsort(-(exact - sizes), kind="stable")
    sizes[remainder_order[: n_cells - sizes.sum()]] += 1
    cell_type = rng.permutation(np.repeat(np.arange(n_cell_types), sizes))

    # Donors balanced within each type, in random order.
    donor = np.empty(n_cells, dtype=np.int64)
    for t in range(n_cell_types):
        idx = np.flatnonzero(cell_type == t)
        labels = rng.permutation(n_donors)[np.arange(idx.size) % n_donors]
        donor[idx] = rng.permutation(labels)

    # Module activities: Beta draws with type-dependent means.
    module_cell_type = np.full(n_modules, -1, dtype=np.int64)
    n_associated = min(n_modules - 1, n_cell_types) if n_modules > 0 else 0
    module_cell_type[:n_associated] = np.arange(n_associated)
    means = np.full((n_cell_types, n_modules), _ACTIVITY_FREE)
    for m in range(n_associated):
        means[:, m] = _ACTIVITY_LOW
        means[module_cell_type[m], m] = _ACTIVITY_HIGH
    cell_means = means[cell_type]
    activity = rng.beta(
        _ACTIVITY_CONCENTRATION * cell_means, _ACTIVITY_CONCENTRATION * (1.0 - cell_means)
    ).reshape(n_cells, n_modules)

    library = library_size * np.exp(library_sd * rng.standard_normal(n_cells) - library_sd**2 / 2)
    return _CellDesign(
        cell_type=cell_type,
        donor=donor,
        module_activity=activity,
        module_type_means=means,
        module_cell_type=module_cell_type,
        library_size=library,
    )


def _simulate_rna(
    rng: np.random.Generator,
    cells: _CellDesign,
    *,
    n_genes: int,
    n_cell_types: int,
    n_donors: int,
    n_markers: int,
    marker_fold: float,
    n_housekeeping: int,
    housekeeping_fold: float,
    module_size: int,
    module_fold: float,
    donor_effect: float,
    dispersion: float,
    regulation: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
) -> _RNASimulation:
    """Plant the gene-level truth and sample RNA counts for the given cells.

    ``regulation``, if given, is called with the background genes and the log baselines once the
    gene roles are drawn; it returns per-cell regulatory states (cells x links) and their log
    effects on the genes (links x genes), added to the log mean like module activities.
    """
    n_modules = cells.module_activity.shape[1]

    # Gene roles from a random permutation: markers per type, housekeeping, modules, background.
    order = rng.permutation(n_genes)
    marker_of = np.full(n_genes, -1, dtype=np.int64)
    module = np.full(n_genes, -1, dtype=np.int64)
    housekeeping = np.zeros(n_genes, dtype=bool)
    start = 0
    for t in range(n_cell_types):
        marker_of[order[start : start + n_markers]] = t
        start += n_markers
    housekeeping[order[start : start + n_housekeeping]] = True
    start += n_housekeeping
    for m in range(n_modules):
        module[order[start : start + module_size]] = m
        start += module_size
    background = np.sort(order[start:])

    # Log baseline.
    baseline = _BASELINE_SD * rng.standard_normal(n_genes)
    signal = (marker_of >= 0) | (module >= 0)
    baseline[signal] = _SIGNAL_BASELINE_SD * rng.standard_normal(int(signal.sum()))
    baseline[housekeeping] = math.log(housekeeping_fold) + _HOUSEKEEPING_SD * rng.standard_normal(
        int(housekeeping.sum())
    )

    # Cell-type effects: markers plus mild shifts of a few background genes.
    log_marker = math.log(marker_fold)
    type_effect = np.zeros((n_cell_types, n_genes))
    is_marker = marker_of >= 0
    type_effect[marker_of[is_marker], np.flatnonzero(is_marker)] = log_marker
    n_shifted = math.ceil(_SHIFT_FRACTION * background.size)
    for t in range(n_cell_types):
        shifted = rng.choice(background, size=n_shifted, replace=False)
        shift = _SHIFT_SD * log_marker * rng.standard_normal(n_shifted)
        type_effect[t, shifted] = np.clip(shift, -_SHIFT_MAX * log_marker, _SHIFT_MAX * log_marker)

    donor_shift = donor_effect * rng.standard_normal((n_donors, n_genes))

    # Module loadings: log(module_fold) on the module's genes.
    loading = np.zeros((n_modules, n_genes))
    in_module = module >= 0
    loading[module[in_module], np.flatnonzero(in_module)] = math.log(module_fold)

    activity = cells.module_activity
    if regulation is not None:
        # planted regulatory states act on the log mean exactly like extra module activities
        states, link_loading = regulation(background, baseline)
        activity = np.hstack([activity, states])
        loading = np.vstack([loading, link_loading])
    counts = _sample_rna_counts(
        rng,
        replace(cells, module_activity=activity),
        log_mean=baseline + type_effect,
        donor_shift=donor_shift,
        loading=loading,
        dispersion=dispersion,
    )
    return _RNASimulation(
        counts=counts,
        marker_of=marker_of,
        housekeeping=housekeeping,
        module=module,
        type_effect=type_effect,
        donor_effect=donor_shift,
        baseline=baseline,
    )


def _sample_rna_counts(
    rng: np.random.Generator,
    cells: _CellDesign,
    *,
    log_mean: np.ndarray,
    donor_shift: np.ndarray,
    loading: np.ndarray,
    dispersion: float,
) -> sp.csr_matrix:
    """Sample negative binomial (gamma-Poisson) counts in blocks of cells.

    ``log_mean`` (cell types x genes) holds baseline plus cell-type effects, ``donor_shift``
    (donors x genes) the donor effects and ``loading`` (modules x genes) the log module folds.
    Every block draws from its own generator, seeded from ``rng`` and the block index, so the
    result does not depend on the number of threads.
    """
    n_cells = cells.cell_type.size
    n_genes = log_mean.shape[1]
    rows = max(1, _CHUNK_ENTRIES // n_genes)
    starts = list(range(0, n_cells, rows))
    block_seed = int(rng.integers(2**63))
    has_modules = loading.shape[0] > 0

    def sample_block(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        block_rng = np.random.default_rng([block_seed, index])
        cell = slice(starts[index], min(starts[index] + rows, n_cells))
        eta = log_mean[cells.cell_type[cell]] + donor_shift[cells.donor[cell]]
        if has_modules:
            eta += cells.module_activity[cell] @ loading
        eta -= eta.max(axis=1, keepdims=True)
        mean = np.exp(eta, out=eta)
        scale = cells.library_size[cell] / mean.sum(axis=1)
        if math.isinf(dispersion):
            mean *= scale[:, None]
        else:
            # Gamma(theta, mean / theta) rates; single precision is ample and twice as fast.
            mean *= (scale / dispersion)[:, None]
            mean *= block_rng.standard_gamma(dispersion, size=mean.shape, dtype=np.float32)
        x = block_rng.poisson(mean)
        flat = np.flatnonzero(x)
        columns = (flat % n_genes).astype(np.int32)
        return x.ravel()[flat].astype(np.float32), columns, np.count_nonzero(x, axis=1)

    n_workers = min(len(starts), _available_cpus(), _MAX_THREADS)
    if n_workers > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            blocks = list(pool.map(sample_block, range(len(starts))))
    else:
        blocks = [sample_block(i) for i in range(len(starts))]

    data = np.concatenate([b[0] for b in blocks])
    row_nnz = np.concatenate([b[2] for b in blocks])
    index_dtype = np.int32 if data.size <= np.iinfo(np.int32).max else np.int64
    indices = np.concatenate([b[1] for b in blocks]).astype(index_dtype, copy=False)
    indptr = np.zeros(n_cells + 1, dtype=index_dtype)
    np.cumsum(row_nnz, out=indptr[1:])
    return sp.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _names(prefix: str, n: int, min_width: int = 1) -> list[str]:
    """``prefix_0``, ... zero-padded to the wider of ``min_width`` and the digits of ``n - 1``."""
    width = max(min_width, len(str(n - 1)))
    return [f"{prefix}_{i:0{width}d}" for i in range(n)]


def _rna_anndata(cells: _CellDesign, rna: _RNASimulation, params: dict[str, Any]) -> AnnData:
    """Assemble the RNA counts and the planted truth into an AnnData."""
    n_cells, n_genes = rna.counts.shape
    type_names = [f"type_{i}" for i in range(params["n_cell_types"])]
    donor_names = [f"donor_{i}" for i in range(params["n_donors"])]
    module_names = [f"module_{i}" for i in range(params["n_modules"])]
    obs_names = _names("cell", n_cells, min_width=5)
    var_names = _names("gene", n_genes, min_width=4)

    obs = pd.DataFrame(
        {
            SimulationKeys.CELL_TYPE: pd.Categorical.from_codes(cells.cell_type, categories=type_names),
            SimulationKeys.DONOR: pd.Categorical.from_codes(cells.donor, categories=donor_names),
            "library_size": cells.library_size.astype(np.float64),
        },
        index=pd.Index(obs_names),
    )
    var = pd.DataFrame(
        {
            "marker_of": [type_names[t] if t >= 0 else "" for t in rna.marker_of],
            "housekeeping": rna.housekeeping,
            "module": [module_names[m] if m >= 0 else "" for m in rna.module],
        },
        index=pd.Index(var_names),
    )
    var_index = np.asarray(var_names, dtype=object)

    truth: dict[str, Any] = {
        "markers": {name: var_index[rna.marker_of == t].tolist() for t, name in enumerate(type_names)},
        "housekeeping": var_index[rna.housekeeping].tolist(),
        "modules": {name: var_index[rna.module == m].tolist() for m, name in enumerate(module_names)},
        "module_cell_type": {
            name: type_names[t] if t >= 0 else ""
            for name, t in zip(module_names, cells.module_cell_type.tolist())
        },
        "module_type_means": pd.DataFrame(
            cells.module_type_means, index=pd.Index(type_names), columns=pd.Index(module_names)
        ),
        "module_activity_key": _MODULE_ACTIVITY_KEY,
        "type_effect_key": _TYPE_EFFECT_KEY,
        "donor_effect_key": _DONOR_EFFECT_KEY,
        "params": params,
    }
    return AnnData(
        X=rna.counts,
        obs=obs,
        var=var,
        obsm={_MODULE_ACTIVITY_KEY: cells.module_activity.astype(np.float32)},
        varm={
            _TYPE_EFFECT_KEY: rna.type_effect.T.astype(np.float32),
            _DONOR_EFFECT_KEY: rna.donor_effect.T.astype(np.float32),
        },
        uns={SimulationKeys.UNS: truth},
    )
