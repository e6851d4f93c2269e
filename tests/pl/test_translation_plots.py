from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from anndata import AnnData
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from mudata import MuData

from scsalient import pl


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def pair() -> tuple[AnnData, AnnData]:
    rng = np.random.default_rng(0)
    counts = rng.poisson(3, size=(30, 5)).astype(np.float32)
    genes = [f"g{i}" for i in range(5)]
    true = AnnData(counts, var=pd.DataFrame(index=genes))
    pred = AnnData(np.log1p(counts / counts.sum(1, keepdims=True) * 1e4) + 0.1, var=pd.DataFrame(index=genes))
    pred.obs_names = true.obs_names
    return true, pred


def test_translation_scatter_summary(pair):
    true, pred = pair
    ax = pl.translation_scatter(true, pred, "rna", show=False)
    assert isinstance(ax, Axes)
    points = ax.collections[0].get_offsets()
    assert points.shape == (5, 2)
    # predictions are log1p CP10k + 0.1: every point sits 0.1 above the diagonal
    np.testing.assert_allclose(points[:, 1] - points[:, 0], 0.1, atol=1e-5)
    # per-cell and per-gene correlations beside the mean control's, no pooled r
    title = ax.get_title()
    assert "r = " not in title and "per-cell r" in title and "per-gene r" in title
    assert title.count("mean control") == 2


def test_translation_scatter_reports_what_the_mean_control_reaches():
    rng = np.random.default_rng(1)
    genes = [f"g{i}" for i in range(40)]
    scale = rng.gamma(2.0, 1.0, size=40)
    counts = rng.poisson(scale * 5, size=(60, 40)).astype(np.float32)
    true = AnnData(counts, var=pd.DataFrame(index=genes))
    observed = np.log1p(counts / counts.sum(1, keepdims=True) * 1e4)
    # the per-gene mean for every cell: pooled means agree perfectly, yet it knows nothing per cell
    mean_only = AnnData(np.broadcast_to(observed.mean(0), observed.shape).copy(), var=true.var)
    mean_only.obs_names = true.obs_names
    title = pl.translation_scatter(true, mean_only, "rna", show=False).get_title()
    per_cell = float(title.split("per-cell r ")[1].split(" ")[0])
    per_cell_control = float(title.split("mean control ")[1].split(")")[0])
    assert per_cell == pytest.approx(per_cell_control, abs=0.005)
    assert "per-gene r 0.00 (mean control 0.00)" in title
    # a training reference that misses a gene is refused
    with pytest.raises(KeyError, match="reference lacks"):
        pl.translation_scatter(true, mean_only, "rna", reference=true[:, :10].copy(), show=False)
    # an informative prediction shows a per-gene r above the control's 0
    noisy = AnnData(observed + rng.normal(0, 0.3, observed.shape).astype(np.float32), var=true.var)
    noisy.obs_names = true.obs_names
    title = pl.translation_scatter(true, noisy, "rna", reference=true, show=False).get_title()
    assert float(title.split("per-gene r ")[1].split(" ")[0]) > 0.5


def test_translation_scatter_panels(pair, tmp_path):
    true, pred = pair
    fig = pl.translation_scatter(
        true, pred, "rna", features=["g1", "g3"], show=False, save=tmp_path / "s.png"
    )
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["g1", "g3"]
    assert (tmp_path / "s.png").exists()
    binary = AnnData((true.X > 3).astype(np.float32), var=true.var)
    probs = AnnData(np.clip(pred.X / 10, 0, 1), var=true.var)
    probs.obs_names = binary.obs_names
    fig = pl.translation_scatter(binary, probs, "atac", features=["g0"], show=False)
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[0].startswith("closed") and labels[1].startswith("open")
    with pytest.raises(KeyError, match="not in both"):
        pl.translation_scatter(true, pred, "rna", features=["nope"], show=False)


def test_peak_gene_links_plot():
    links = pd.DataFrame(
        {
            "gene": ["a", "b", "c", "a", "c"],
            "peak": ["p1", "p1", "p1", "p2", "p2"],
            "score": [0.5, 0.3, 0.1, 0.4, 0.2],
            "sign": [1, -1, 1, 1, 1],
            "direction": "rna_to_atac",
            "rank": [1, 2, 3, 1, 2],
            "distance": np.nan,
        }
    )
    mdata = MuData({"rna": AnnData(np.ones((2, 3))), "atac": AnnData(np.ones((2, 2)))})
    mdata.uns["translator"] = {"links": links}
    truth = pd.DataFrame({"gene": ["a"], "peak": ["p1"]})
    fig = pl.peak_gene_links(mdata, ["p1"], truth=truth, show=False)
    ax = fig.axes[0]
    widths = [bar.get_width() for bar in ax.patches]
    assert widths == [0.1, -0.3, 0.5]  # weakest at the bottom, repressing bars to the left
    assert [t.get_text() for t in ax.get_yticklabels()] == ["c", "b", "a"]
    colours = [bar.get_facecolor() for bar in ax.patches]
    assert colours[2] != colours[0]  # the known link is highlighted
    default = pl.peak_gene_links(mdata, show=False)
    assert [a.get_title() for a in default.axes] == ["p1", "p2"]
    with pytest.raises(ValueError, match="atac_to_rna"):
        pl.peak_gene_links(mdata, direction="atac_to_rna", show=False)
    with pytest.raises(KeyError, match="tl.peak_gene_links"):
        pl.peak_gene_links(MuData({"rna": AnnData(np.ones((2, 3)))}), show=False)
