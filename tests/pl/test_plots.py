from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import h5py
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from scsalient import pl
from scsalient._constants import NACTKeys, SalientKeys
from scsalient.tl import query_cell_types, salient_genes

# groups A/A2 share their specific genes (and so correlate); B and C have their own
GROUPS = ["A", "A2", "B", "C"]
PROGRAMS = {"A": "A", "A2": "A", "B": "B", "C": "C"}
N_SPECIFIC = 4


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def adata() -> ad.AnnData:
    rng = np.random.default_rng(0)
    genes = [f"{p}_{i}" for p in "ABC" for i in range(N_SPECIFIC)] + [f"N{i}" for i in range(188)]
    labels = np.repeat(GROUPS, 25)
    logits = rng.normal(0, 0.3, size=(len(labels), len(genes)))
    for group, program in PROGRAMS.items():
        start = "ABC".index(program) * N_SPECIFIC
        logits[labels == group, start : start + N_SPECIFIC] += 3
    attention = (np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)).astype(np.float32)
    adata = ad.AnnData(
        X=attention.copy(),
        obs=pd.DataFrame(
            {"group": pd.Categorical(labels, categories=GROUPS)}, index=[f"c{i}" for i in range(len(labels))]
        ),
        var=pd.DataFrame({"symbol": [f"sym_{g}" for g in genes]}, index=genes),
    )
    adata.obsm[NACTKeys.ATTENTION] = attention
    adata.obsm["X_umap"] = rng.normal(size=(adata.n_obs, 2))
    salient_genes(adata, "group", n_top=8, n_genes=6)
    database = {"Type A": [f"A_{i}" for i in range(4)], "Type B": ["B_0", "B_1"], "Type C": ["C_0", "N5"]}
    query_cell_types(adata, database)
    return adata


def tick_texts(labels) -> list[str]:
    return [label.get_text() for label in labels]


def test_attention_correlation_clusters_similar_groups(adata, tmp_path):
    path = tmp_path / "corr.png"
    ax = pl.attention_correlation(adata, "group", show=False, save=path)
    assert isinstance(ax, Axes)
    assert path.stat().st_size > 0
    order = tick_texts(ax.get_xticklabels())
    assert sorted(order) == sorted(GROUPS)
    assert tick_texts(ax.get_yticklabels()) == order
    # A and A2 share a program: they are neighbours after clustering
    assert abs(order.index("A") - order.index("A2")) == 1
    matrix = np.asarray(ax.images[0].get_array())
    assert matrix.shape == (4, 4)
    np.testing.assert_allclose(np.diag(matrix), 1.0)
    i, j = order.index("A"), order.index("A2")
    k = order.index("B")
    assert matrix[i, j] > 0.9 > matrix[i, k]
    # a colour bar and a dendrogram were added to the figure
    assert len(ax.figure.axes) == 3


def test_attention_correlation_from_stored_means_and_spearman(adata):
    means = pd.DataFrame(adata.uns[SalientKeys.SALIENT_GENES]["mean_attention_all"])
    other = adata.copy()
    other.varm[NACTKeys.ATTENTION_MEAN] = means
    ax = pl.attention_correlation(other, show=False, cluster=False)
    assert tick_texts(ax.get_xticklabels()) == GROUPS  # no clustering: stored order
    assert len(ax.figure.axes) == 2
    ax = pl.attention_correlation(adata, "group", method="spearman", show=False)
    assert np.asarray(ax.images[0].get_array()).shape == (4, 4)
    with pytest.raises(ValueError, match="pearson"):
        pl.attention_correlation(adata, "group", method="kendall", show=False)
    with pytest.raises(KeyError, match=NACTKeys.ATTENTION_MEAN):
        pl.attention_correlation(adata, show=False)


def test_attention_correlation_reads_h5py(adata, tmp_path):
    with h5py.File(tmp_path / "att.h5", "w") as handle:
        handle["a"] = adata.obsm[NACTKeys.ATTENTION]
        other = adata.copy()
        other.obsm[NACTKeys.ATTENTION] = handle["a"]
        ax = pl.attention_correlation(other, "group", batch_size=7, show=False)
        in_memory = pl.attention_correlation(adata, "group", show=False)
        np.testing.assert_allclose(ax.images[0].get_array(), in_memory.images[0].get_array(), rtol=1e-6)


@pytest.mark.parametrize("kind", ["dotplot", "heatmap"])
def test_salient_genes_plot(adata, kind, tmp_path):
    _, given = plt.subplots()
    path = tmp_path / f"{kind}.pdf"
    ax = pl.salient_genes(adata, n_genes=3, kind=kind, ax=given, show=False, save=path)
    assert ax is given
    assert path.stat().st_size > 0
    names = pd.DataFrame(adata.uns[SalientKeys.SALIENT_GENES]["names"])
    expected_genes = [gene for group in GROUPS for gene in names[group][:3]]
    assert tick_texts(ax.get_xticklabels()) == expected_genes
    assert tick_texts(ax.get_yticklabels()) == GROUPS
    assert {g.split("_")[0] for g in expected_genes[:3]} == {"A"}
    top_axis = ax.child_axes[0]
    assert tick_texts(top_axis.get_xticklabels()) == GROUPS
    if kind == "heatmap":
        values = np.asarray(ax.images[0].get_array())
        assert values.shape == (len(GROUPS), 3 * len(GROUPS))
    else:
        points = ax.collections[0]
        assert points.get_offsets().shape == (len(GROUPS) * 3 * len(GROUPS), 2)
        values = np.asarray(points.get_array()).reshape(len(GROUPS), -1)
        sizes = points.get_sizes().reshape(len(GROUPS), -1)
        # the C block (last 3 columns) is large only in row C
        assert (sizes[3, 9:] > 100).all()
        assert (sizes[:3, 9:] < 50).all()
    # colours: each group's own genes score highest in its own row (C is unique to row C)
    assert (values[3, 9:] > values[:3, 9:].max(axis=0)).all()


def test_salient_genes_plot_options(adata):
    ax = pl.salient_genes(
        adata, "group", groups=["B"], n_genes=2, gene_symbols="symbol", standard_scale="var", show=False
    )
    labels = tick_texts(ax.get_xticklabels())
    assert len(labels) == 2
    assert all(label.startswith("sym_B_") for label in labels)
    values = np.asarray(ax.collections[0].get_array()).reshape(len(GROUPS), 2)
    np.testing.assert_allclose(values.max(axis=0), 1.0)
    with pytest.raises(ValueError, match="groupby"):
        pl.salient_genes(adata, "other", show=False)
    with pytest.raises(ValueError, match="kind"):
        pl.salient_genes(adata, kind="violin", show=False)
    with pytest.raises(KeyError, match="Z"):
        pl.salient_genes(adata, groups=["Z"], show=False)
    with pytest.raises(KeyError, match="missing"):
        pl.salient_genes(adata, key="missing", show=False)


def test_attention_embedding_panels(adata, tmp_path):
    genes = ["A_0", "B_1", "N3"]
    path = tmp_path / "umap.png"
    figure = pl.attention_embedding(adata, genes, ncols=2, show=False, save=path)
    assert isinstance(figure, Figure)
    assert path.stat().st_size > 0
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == genes
    colours = np.asarray(panels[0].collections[0].get_array())
    assert colours.shape == (adata.n_obs,)
    column = adata.obsm[NACTKeys.ATTENTION][:, adata.var_names.get_loc("A_0")]
    np.testing.assert_allclose(np.sort(colours), np.sort(column), rtol=1e-6)
    assert colours[-1] == pytest.approx(column.max())  # highest attention drawn last (on top)
    by_symbol = pl.attention_embedding(adata, "sym_C_0", gene_symbols="symbol", basis="X_umap", show=False)
    assert [ax.get_title() for ax in by_symbol.axes if ax.get_title()] == ["sym_C_0"]


def test_attention_embedding_errors(adata):
    with pytest.raises(KeyError, match="X_tsne"):
        pl.attention_embedding(adata, ["A_0"], basis="tsne", show=False)
    with pytest.raises(KeyError, match="not_a_gene"):
        pl.attention_embedding(adata, ["A_0", "not_a_gene"], show=False)


def test_cell_type_query_plot(adata, tmp_path):
    path = tmp_path / "query.svg"
    figure = pl.cell_type_query(adata, n_types=2, show=False, save=path)
    assert path.stat().st_size > 0
    panels = [ax for ax in figure.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == GROUPS
    results = adata.uns[SalientKeys.CELL_TYPE_QUERY]["results"]
    for ax in panels:
        top_down = [t.get_text() for t in sorted(ax.get_yticklabels(), key=lambda t: -t.get_position()[1])]
        assert len(top_down) == 2
        expected = results[results["group"] == ax.get_title()].sort_values("rank")["cell_type"].head(2)
        assert top_down == expected.tolist()  # rank 1 on top
        assert len(ax.patches) == 2
    assert max(panels[2].get_yticklabels(), key=lambda t: t.get_position()[1]).get_text() == "Type B"
    single = pl.cell_type_query(adata, groups="C", show=False)
    assert [ax.get_title() for ax in single.axes] == ["C"]
    assert len(single.axes[0].patches) == 3  # only three types in the database
    assert single.axes[0].get_xlabel() == "log-likelihood"
    entry = adata.uns[SalientKeys.CELL_TYPE_QUERY]
    adata.uns["auc_query"] = {"results": entry["results"], "params": {**entry["params"], "method": "auc"}}
    assert pl.cell_type_query(adata, key="auc_query", show=False).axes[0].get_xlabel() == "rank test z-score"
    with pytest.raises(KeyError, match="Z"):
        pl.cell_type_query(adata, groups=["Z"], show=False)


def test_show_returns_none(adata, monkeypatch):
    shown = []
    monkeypatch.setattr(plt, "show", lambda: shown.append(True))
    assert pl.cell_type_query(adata, show=True) is None
    assert shown == [True]


def test_attention_correlation_does_not_colour_the_diagonal_like_the_strongest_pair(adata):
    # the colour scale covers the off-diagonal values, so the diagonal (1 by definition) lies
    # beyond its top; clipped to the top colour it would look like the strongest pair (A, A2)
    ax = pl.attention_correlation(adata, "group", show=False)
    image = ax.images[0]
    colours = image.to_rgba(image.get_array())
    order = tick_texts(ax.get_xticklabels())
    i, j = order.index("A"), order.index("A2")
    strongest = colours[i, j]
    np.testing.assert_allclose(strongest, image.cmap(image.cmap.N - 1))  # the top of the scale
    for k in range(len(order)):
        assert not np.allclose(colours[k, k], strongest), f"diagonal cell {order[k]} looks like (A, A2)"
    np.testing.assert_allclose(colours[0, 0], colours[1, 1])  # one neutral colour for the diagonal
    np.testing.assert_allclose(np.diag(np.asarray(image.get_array())), 1.0)  # the values are kept


def _axes_with_grid(figure: Figure) -> list[Axes]:
    """The axes of ``figure`` that draw grid lines (axes switched off draw none)."""
    return [
        ax
        for ax in figure.axes
        if ax.axison and any(line.get_visible() for line in ax.get_xgridlines() + ax.get_ygridlines())
    ]


@pytest.fixture
def scanpy_figure_params():
    """``sc.set_figure_params()`` (which switches grids on) for one test, then the settings before."""
    import scanpy as sc

    names = ("_vector_friendly", "_frameon", "file_format_figs")
    before = {name: getattr(sc.settings, name) for name in names}
    with plt.rc_context():
        sc.set_figure_params()
        yield
    for name, value in before.items():
        setattr(sc.settings, name, value)


def test_matrix_plots_and_colour_bars_draw_no_grid_after_scanpy_figure_params(adata, scanpy_figure_params):
    from scsalient._constants import ModuleAEKeys

    impact = ad.AnnData(obs=pd.DataFrame(index=["c0"]))
    rng = np.random.default_rng(0)
    impact.uns[ModuleAEKeys.UNS] = {
        "impact": pd.DataFrame(rng.random((5, 4)), index=[f"set{i}" for i in range(5)], columns=list("0123"))
    }
    _, reference = plt.subplots()
    assert _axes_with_grid(reference.figure) == [reference]  # the style draws grids
    figures = {
        "attention_correlation": pl.attention_correlation(adata, "group", show=False).figure,
        "salient_genes heatmap": pl.salient_genes(adata, n_genes=3, kind="heatmap", show=False).figure,
        "salient_genes dotplot": pl.salient_genes(adata, n_genes=3, kind="dotplot", show=False).figure,
        "gene_set_impact": pl.gene_set_impact(impact, show=False).figure,
    }
    for name, figure in figures.items():
        assert len(figure.axes) >= 2  # the heatmap and its colour bar
        assert _axes_with_grid(figure) == [], f"{name} draws grid lines"
