"""Gene and peak coordinates, windowed candidate pairs, model-free link baselines and link metrics."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

import scsalient as ss
from scsalient.metrics import link_recovery
from scsalient.tl._genome import pairs_in_window


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(600, 300, modalities="rna+atac", n_peaks=800, n_links=30, seed=0)


def test_peak_positions_from_names_and_columns():
    names = ["chr1:100-200", "chr2-1000-1100", "chrX_50_70", "GL000194.1:5-9"]
    parsed = ss.tl.peak_positions(pd.DataFrame(index=names))
    assert parsed["chrom"].tolist() == ["chr1", "chr2", "chrX", "GL000194.1"]
    np.testing.assert_allclose(parsed["centre"], [150, 1050, 60, 7])
    var = pd.DataFrame({"Chromosome": ["chr3"], "Start": [10], "End": [30]}, index=["p1"])
    assert ss.tl.peak_positions(var).loc["p1"].tolist() == ["chr3", 20.0]
    with pytest.raises(KeyError, match="chr1:100-200"):
        ss.tl.peak_positions(pd.DataFrame(index=["peak_1", "peak_2"]))


def test_gene_positions_use_the_strand_and_refuse_missing_coordinates():
    var = pd.DataFrame(
        {
            "chrom": ["chr1", "chr1", None],
            "start": [100, 100, 5],
            "end": [900, 900, 9],
            "strand": ["+", "-", "+"],
        },
        index=["a", "b", "c"],
    )
    genes = ss.tl.gene_positions(var)
    np.testing.assert_array_equal(genes["tss"].to_numpy()[:2], [100, 900])
    assert np.isnan(genes.loc["c", "tss"])  # no chromosome: linked to nothing
    with pytest.raises(KeyError, match="gene coordinates"):
        ss.tl.gene_positions(pd.DataFrame({"feature_types": ["GEX"]}, index=["a"]))


def test_pairs_stay_on_the_chromosome_and_in_the_window():
    genes = pd.DataFrame({"chrom": ["chr1", "chr2"], "tss": [1_000_000.0, 1_000_000.0]})
    peaks = pd.DataFrame(
        {
            "chrom": ["chr1", "chr1", "chr2", "chr1"],
            "centre": [1_400_000.0, 1_600_000.0, 900_000.0, 990_000.0],
        }
    )
    pairs = pairs_in_window(genes, peaks, 500_000)
    assert list(zip(pairs["gene_index"], pairs["peak_index"])) == [(0, 0), (0, 3), (1, 2)]
    np.testing.assert_allclose(pairs["distance"], [400_000, -10_000, -100_000])


def test_distance_score_is_the_nearest_gene_rule():
    score = ss.tl.distance_score([0, 10_000, -10_000, 200_000, np.nan])
    assert score[0] == 1 and score[1] == score[2] > score[3] > 0 and score[4] == 0


def test_distance_correlation_score_orders_by_distance_then_correlation():
    score = ss.tl.distance_correlation_score([0, 0, 100_000, 100_000, 0], [3.0, -3.0, 3.0, np.nan, np.nan])
    assert score[0] > score[4] > score[1]  # same distance: the correlated pair first; NaN z counts as 0
    assert score[2] > score[3]  # at 100 kb too
    assert score[4] > score[2]  # an uncorrelated pair at the TSS beats a correlated one 100 kb away
    assert score[4] == 0.5


def test_link_recovery_on_known_rankings():
    pairs = pd.DataFrame(
        {
            "gene": ["g1", "g2", "g1", "g2", "g3"],
            "peak": ["p1", "p1", "p2", "p2", "p2"],
            "score": [0.9, 0.1, 0.2, 0.8, 0.1],
        }
    )
    truth = pd.DataFrame({"gene": ["g1", "g1", "g9"], "peak": ["p1", "p2", "p9"]})
    out = link_recovery(pairs, truth)
    assert out["precision_at_1"] == 0.5  # p1 right, p2 wrong
    assert out["hit_at_10"] == 1.0
    assert out["n_true_in_candidates"] == 2 and out["n_true"] == 3
    assert out["positive_rate"] == pytest.approx(0.4)
    # positives ranked 1st and 3rd of 5: AP = (1/1 + 2/3) / 2
    assert out["auprc"] == pytest.approx((1 + 2 / 3) / 2)
    with pytest.raises(KeyError, match="score"):
        link_recovery(pairs.drop(columns="score"), truth)


def test_peak_gene_correlation_matches_numpy_and_finds_planted_links(sim):
    rna, atac = sim["rna"], sim["atac"]
    table = ss.tl.peak_gene_correlation(rna, atac, window=500_000)
    genes, peaks = ss.tl.gene_positions(rna.var), ss.tl.peak_positions(atac.var)
    same = genes.loc[table["gene"], "chrom"].to_numpy() == peaks.loc[table["peak"], "chrom"].to_numpy()
    assert same.all() and (table["distance"].abs() <= 500_000).all()
    # one pair against a direct computation
    row = table.iloc[len(table) // 2]
    x = rna[:, row["gene"]].X.toarray().ravel()
    library = np.asarray(rna.X.sum(1)).ravel()
    expression = np.log1p(x / library * 1e4)
    accessible = (atac[:, row["peak"]].X.toarray().ravel() > 0).astype(float)
    assert row["correlation"] == pytest.approx(np.corrcoef(expression, accessible)[0, 1], abs=1e-4)

    truth = sim.uns["simulation"]["links"]
    z = link_recovery(table, truth, score="zscore")
    distance = link_recovery(table.assign(score=ss.tl.distance_score(table["distance"])), truth)
    assert z["n_true_in_candidates"] == len(truth)  # every planted link lies in the window
    assert z["precision_at_1"] > 0.8 and z["auprc"] > 10 * z["positive_rate"]
    assert distance["auprc"] > z["positive_rate"]


def test_peak_gene_correlation_without_gene_coordinates_says_what_to_add(sim):
    rna = AnnData(sim["rna"].X, obs=sim["rna"].obs, var=pd.DataFrame(index=sim["rna"].var_names))
    with pytest.raises(KeyError, match="'chrom' column and a 'tss' or 'start'"):
        ss.tl.peak_gene_correlation(rna, sim["atac"])
