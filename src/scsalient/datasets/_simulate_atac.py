"""Paired chromatin accessibility for :func:`scsalient.datasets.simulate` (``modalities="rna+atac"``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scsalient._constants import SimulationKeys

# Fixed shape constants of the accessibility model (documented in ``simulate``).
_N_CHROMOSOMES = 10
_CHROMOSOME_LENGTH = 50_000_000
_GENE_LENGTH = 20_000  # every simulated gene spans 20 kb from its TSS
_PEAK_WIDTH = 500
_LINK_WINDOW = 50_000  # a regulatory peak lies within 50 kb of its gene's TSS
_BACKGROUND_OPEN = (1.0, 15.0)  # Beta parameters of the open probability of background peaks
_TYPE_PEAK_OPEN = 0.5  # open probability of a cell-type peak in its type
_LINK_OPEN_HOME = 0.5  # open probability of a regulatory peak in its home type
_LINK_OPEN_OTHER = 0.15  # ... in the other types
_CAPTURE_CONCENTRATION = 10.0  # Beta concentration of the per-cell capture rate
_BLOCK_ENTRIES = 2**22  # cells x peaks entries sampled at once


@dataclass
class _Regulation:
    """Planted regulatory links; filled in by :meth:`__call__` once the gene roles are known."""

    rng: np.random.Generator
    cell_type: np.ndarray
    n_cell_types: int
    n_links: int
    link_fold: float
    link_gene: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    link_home: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    link_open: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # types x links
    states: np.ndarray = field(default_factory=lambda: np.empty((0, 0)))  # cells x links, 0/1

    def __call__(self, background: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Choose the linked genes and draw the regulatory states; return them and their log effects."""
        rng = self.rng
        # regulated genes: background genes expressed at least at the median background level
        candidates = background[baseline[background] >= np.median(baseline[background])]
        if candidates.size < self.n_links:
            candidates = background
        self.link_gene = np.sort(rng.choice(candidates, size=self.n_links, replace=False))
        self.link_home = rng.integers(self.n_cell_types, size=self.n_links)
        self.link_open = np.full((self.n_cell_types, self.n_links), _LINK_OPEN_OTHER)
        self.link_open[self.link_home, np.arange(self.n_links)] = _LINK_OPEN_HOME
        p = self.link_open[self.cell_type]
        self.states = (rng.random(p.shape) < p).astype(np.float64)
        loading = np.zeros((self.n_links, baseline.size))
        loading[np.arange(self.n_links), self.link_gene] = math.log(self.link_fold)
        return self.states, loading


def simulate_atac(
    rna: AnnData,
    regulation: _Regulation,
    *,
    n_peaks: int,
    n_type_peaks: int,
    peak_capture: float,
    params: dict[str, Any],
) -> tuple[AnnData, pd.DataFrame]:
    """Place genes and peaks on a genome and sample binary accessibility.

    Adds ``chrom``/``start``/``end`` to ``rna.var`` and returns the ATAC AnnData and the links table.
    """
    rng = regulation.rng
    n_cells, n_genes = rna.shape
    n_types = regulation.n_cell_types
    n_links = regulation.n_links
    chroms = np.array([f"chr{i + 1}" for i in range(_N_CHROMOSOMES)], dtype=object)

    # Genes: a chromosome and a TSS each (genes on the + strand, 20 kb long).
    gene_chrom = rng.integers(_N_CHROMOSOMES, size=n_genes)
    gene_start = rng.integers(_LINK_WINDOW, _CHROMOSOME_LENGTH - _LINK_WINDOW - _GENE_LENGTH, size=n_genes)
    rna.var["chrom"] = chroms[gene_chrom].astype(str)
    rna.var["start"] = gene_start.astype(np.int64)
    rna.var["end"] = (gene_start + _GENE_LENGTH).astype(np.int64)

    # Peaks: regulatory peaks near their gene's TSS, the rest anywhere.
    n_free = n_peaks - n_links
    offset = rng.integers(-_LINK_WINDOW, _LINK_WINDOW + 1, size=n_links)
    centre = np.concatenate(
        [
            gene_start[regulation.link_gene] + offset,
            rng.integers(_PEAK_WIDTH, _CHROMOSOME_LENGTH - _PEAK_WIDTH, size=n_free),
        ]
    )
    chrom = np.concatenate([gene_chrom[regulation.link_gene], rng.integers(_N_CHROMOSOMES, size=n_free)])
    kind = np.array(["regulatory"] * n_links + ["background"] * n_free, dtype=object)
    open_type = np.concatenate([regulation.link_home, np.full(n_free, -1)])
    type_peaks = n_links + rng.permutation(n_free)[: n_types * n_type_peaks]
    open_type[type_peaks] = np.repeat(np.arange(n_types), n_type_peaks)
    kind[type_peaks] = "cell_type"

    # Open probability per cell type and peak.
    prob = np.repeat(rng.beta(*_BACKGROUND_OPEN, size=n_peaks)[None, :], n_types, axis=0)
    prob[:, :n_links] = regulation.link_open
    prob[open_type[type_peaks], type_peaks] = _TYPE_PEAK_OPEN

    # Sort peaks by position; keep track of where each one went.
    order = np.lexsort((centre, chrom))
    rank = np.empty(n_peaks, dtype=np.int64)
    rank[order] = np.arange(n_peaks)
    chrom, centre, kind = chrom[order], centre[order], kind[order]
    open_type, prob = open_type[order], prob[:, order]
    link_peak = rank[:n_links]

    # Accessibility: open with the type's probability (regulatory peaks: the planted state), seen
    # with a per-cell capture rate.
    capture = rng.beta(
        _CAPTURE_CONCENTRATION * peak_capture, _CAPTURE_CONCENTRATION * (1.0 - peak_capture), size=n_cells
    )
    rows = max(1, _BLOCK_ENTRIES // n_peaks)
    blocks = []
    for start in range(0, n_cells, rows):
        cell = slice(start, min(start + rows, n_cells))
        is_open = rng.random((cell.stop - cell.start, n_peaks)) < prob[regulation.cell_type[cell]]
        is_open[:, link_peak] = regulation.states[cell] > 0
        seen = rng.random(is_open.shape) < capture[cell, None]
        blocks.append(sp.csr_matrix(is_open & seen, dtype=np.float32))
    x = sp.vstack(blocks, format="csr")

    width = max(5, len(str(n_peaks - 1)))
    peak_names = [f"peak_{i:0{width}d}" for i in range(n_peaks)]
    gene_names = np.asarray(rna.var_names, dtype=object)
    linked_gene = np.full(n_peaks, "", dtype=object)
    linked_gene[link_peak] = gene_names[regulation.link_gene]
    type_names = np.asarray(rna.obs[SimulationKeys.CELL_TYPE].cat.categories, dtype=object)
    start = centre - _PEAK_WIDTH // 2
    var = pd.DataFrame(
        {
            "chrom": chroms[chrom].astype(str),
            "start": start.astype(np.int64),
            "end": (start + _PEAK_WIDTH).astype(np.int64),
            SimulationKeys.LINKED_GENE: linked_gene.astype(str),
            "peak_type": kind.astype(str),
            "open_in": np.where(open_type >= 0, type_names[np.maximum(open_type, 0)], "").astype(str),
        },
        index=pd.Index(peak_names),
    )
    tss = gene_start[regulation.link_gene]
    peak_centre = centre[link_peak]
    links = pd.DataFrame(
        {
            "gene": gene_names[regulation.link_gene].astype(str),
            "peak": np.asarray(peak_names, dtype=object)[link_peak].astype(str),
            "distance": (peak_centre - tss).astype(np.int64),
            "home_type": type_names[regulation.link_home].astype(str),
            "open_home": _LINK_OPEN_HOME,
            "open_other": _LINK_OPEN_OTHER,
            "log_fold": math.log(regulation.link_fold),
        }
    )
    atac = AnnData(
        X=x,
        obs=pd.DataFrame(index=rna.obs_names.copy()),
        var=var,
        obsm={SimulationKeys.REGULATORY_STATE: regulation.states.astype(np.float32)},
        varm={SimulationKeys.OPEN_PROBABILITY: prob.T.astype(np.float32)},
    )
    atac.obs["capture"] = capture
    atac.uns["simulation"] = {"params": params}
    return atac, links
