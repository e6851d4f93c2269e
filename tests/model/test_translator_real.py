"""Translator on real paired RNA + ATAC (MOp SNARE-seq2), one sub-library held out."""

from __future__ import annotations

import mudata as md
import numpy as np
import pytest
import scvi

import scsalient as ss
from scsalient.metrics import translation_controls, translation_scores

TRAIN_BATCHES = ["09A", "09B", "09C"]
TEST_BATCH = "09J"
N_PEAKS = 2000


@pytest.mark.realdata
def test_mop_translation_beats_controls(shared_data):
    scvi.settings.seed = 0
    with md.set_options(pull_on_update=False):
        full = md.read_h5mu(shared_data / "mop_snareseq2_multiome_10k.h5mu")
    # about 4% of the regions are accessible in no nucleus: registration says so
    with pytest.warns(UserWarning, match="accessible in no cell"):
        ss.model.Translator.setup_mudata(full)

    batch = full.obs["batch"].astype(str).to_numpy()
    train, test = np.isin(batch, TRAIN_BATCHES), batch == TEST_BATCH
    atac = full["atac"]
    keep = np.sort(np.argsort(-np.asarray((atac.X[train] > 0).sum(axis=0)).ravel())[:N_PEAKS])
    with md.set_options(pull_on_update=False):
        paired = md.MuData({"rna": full["rna"][train].copy(), "atac": atac[train][:, keep].copy()})
    ss.model.Translator.setup_mudata(paired)
    model = ss.model.Translator(paired, n_hidden=128)
    model.train(max_epochs=10, enable_progress_bar=False)

    rna_test, atac_test = full["rna"][test].copy(), atac[test][:, keep].copy()
    to_atac = translation_scores(atac_test, model.translate(rna_test, to="atac"), "atac")
    atac_mean = translation_controls(paired["atac"], atac_test, "atac").loc["feature_mean"]
    to_rna = translation_scores(rna_test, model.translate(atac_test, to="rna"), "rna")
    rna_mean = translation_controls(paired["rna"], rna_test, "rna").loc["feature_mean"]
    print(to_atac, dict(atac_mean), to_rna, dict(rna_mean))
    assert to_atac["auprc"] > atac_mean["auprc"]
    assert to_atac["auroc_per_cell"] > atac_mean["auroc_per_cell"]
    assert to_rna["pearson_per_gene"] > 0.05  # the mean control scores 0
    assert to_rna["rmse"] < rna_mean["rmse"]
