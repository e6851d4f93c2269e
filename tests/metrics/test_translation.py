from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scsalient.metrics import feature_means, translation_controls, translation_scores


@pytest.fixture(scope="module")
def counts() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.poisson(rng.gamma(1.0, 2.0, size=(60, 40))).astype(np.float32) + np.eye(
        60, 40, dtype=np.float32
    )


def _log1p_cp10k(x: np.ndarray) -> np.ndarray:
    return np.log1p(x / x.sum(1, keepdims=True) * 1e4)


def test_rna_perfect_and_constant_predictions(counts):
    truth = _log1p_cp10k(counts)
    perfect = translation_scores(sp.csr_matrix(counts), truth, "rna")
    assert perfect["rmse"] == pytest.approx(0, abs=1e-5)
    assert perfect["pearson_per_cell"] == pytest.approx(1)
    assert perfect["pearson_per_gene"] == pytest.approx(1)
    constant = translation_scores(counts, np.broadcast_to(truth.mean(0), truth.shape), "rna")
    assert constant["pearson_per_gene"] == 0  # constant columns score 0, as in NeurIPS 2021
    assert constant["rmse"] == pytest.approx(np.sqrt(((truth - truth.mean(0)) ** 2).mean()), rel=1e-5)


def test_atac_scores_against_sklearn_definitions():
    rng = np.random.default_rng(1)
    truth = (rng.random((50, 80)) < 0.1).astype(np.float32)
    truth[:, 0] = 1  # every cell has an open peak
    truth[0, :] = 0
    truth[0, 1] = 2  # counts are binarised
    noise = rng.random(truth.shape)
    good = translation_scores(truth, 0.7 * (truth > 0) + 0.3 * noise, "atac")
    assert good["auroc"] == 1 and good["auprc"] == 1
    assert good["fraction_accessible"] == pytest.approx((truth > 0).mean())
    random = translation_scores(AnnData(truth), noise, "atac")
    assert 0.4 < random["auroc"] < 0.6
    assert random["auprc"] < 0.2
    zeros = translation_scores(truth, np.zeros_like(truth), "atac")
    assert zeros["rmse"] == pytest.approx(np.sqrt((truth > 0).mean()))
    assert zeros["auroc"] == 0.5


def test_controls(counts):
    train, test = counts[:40], counts[40:]
    controls = translation_controls(train, test, "rna")
    assert list(controls.index) == ["all_zeros", "feature_mean"]
    np.testing.assert_allclose(feature_means(train, "rna"), _log1p_cp10k(train).mean(0), rtol=1e-5)
    assert controls.loc["feature_mean", "rmse"] < controls.loc["all_zeros", "rmse"]
    binary = (counts > 2).astype(np.float32)
    atac = translation_controls(AnnData(binary[:40]), AnnData(binary[40:]), "atac")
    np.testing.assert_allclose(feature_means(binary[:40], "atac"), binary[:40].mean(0))
    assert atac.loc["all_zeros", "auroc"] == 0.5


def test_bad_input(counts):
    with pytest.raises(ValueError, match="modality"):
        translation_scores(counts, counts, "protein")
    with pytest.raises(ValueError, match="shapes"):
        translation_scores(counts, counts[:, :3], "rna")
    with pytest.raises(ValueError, match="NaN"):
        translation_scores(counts, np.full(counts.shape, np.nan), "rna")
    a, b = AnnData(counts), AnnData(counts)
    b.obs_names = [f"x{i}" for i in range(b.n_obs)]
    with pytest.raises(ValueError, match="obs_names"):
        translation_scores(a, b, "rna")
