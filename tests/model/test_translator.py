"""Translator on simulated paired RNA + ATAC with planted regulatory links."""

from __future__ import annotations

import warnings

import mudata as md
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import scvi
import torch
from anndata import AnnData

import scsalient as ss
from scsalient._constants import TranslatorKeys
from scsalient.metrics import translation_controls, translation_scores

N_LINKS = 30
N_GENES, N_PEAKS = 300, 800


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(
        1200, N_GENES, modalities="rna+atac", n_peaks=N_PEAKS, n_links=N_LINKS, library_size=10000, seed=0
    )


@pytest.fixture(scope="module")
def trained(sim):
    scvi.settings.seed = 0  # module fixtures run before the autouse seed fixture
    mdata = sim.copy()
    ss.model.Translator.setup_mudata(mdata)
    model = ss.model.Translator(mdata)  # the defaults: 5 members at dropout 0.3, which keeps the links
    model.train(max_epochs=60, lr=3e-3, enable_progress_bar=False)
    return model, mdata


@pytest.fixture(scope="module")
def held_out(trained):
    model, mdata = trained
    val, train = model.validation_indices, model.train_indices
    return {
        "train": {m: mdata[m][train].copy() for m in ("rna", "atac")},
        "test": {m: mdata[m][val].copy() for m in ("rna", "atac")},
    }


# --- evidence ---------------------------------------------------------------------------------


def test_both_directions_beat_the_feature_mean(trained, held_out):
    model, _ = trained
    train, test = held_out["train"], held_out["test"]

    atac = translation_scores(test["atac"], model.translate(test["rna"], to="atac"), "atac")
    atac_controls = translation_controls(train["atac"], test["atac"], "atac")
    mean = atac_controls.loc["feature_mean"]
    # measured (defaults, training seed 0): AUPRC 0.186 vs 0.117, per cell 0.210 vs 0.134,
    # Pearson per cell 0.271 vs 0.191, AUROC 0.773 vs 0.743 (random scorer: AUPRC 0.049)
    assert atac["auprc"] > 1.25 * mean["auprc"]
    assert atac["auprc_per_cell"] > 1.2 * mean["auprc_per_cell"]
    assert atac["pearson_per_cell"] > mean["pearson_per_cell"] + 0.03
    assert atac["auroc"] > mean["auroc"]
    assert atac["rmse"] < mean["rmse"] < atac_controls.loc["all_zeros", "rmse"]

    rna = translation_scores(test["rna"], model.translate(test["atac"], to="rna"), "rna")
    rna_controls = translation_controls(train["rna"], test["rna"], "rna")
    mean = rna_controls.loc["feature_mean"]
    # measured (same run): RMSE 0.611 vs 0.647, Pearson per cell 0.834 vs 0.809, per gene 0.219 vs 0
    assert rna["rmse"] < mean["rmse"] - 0.005
    assert rna["pearson_per_cell"] > mean["pearson_per_cell"]
    assert rna["pearson_per_gene"] > 0.1
    assert mean["pearson_per_gene"] == 0


def test_links_recover_planted_regulation(trained, sim):
    model, mdata = trained
    truth = sim.uns["simulation"]["links"]
    ss.tl.peak_gene_links(
        model, mdata, genes=list(truth["gene"]), peaks=list(truth["peak"]), n_top=3, n_cells=150, n_steps=8
    )
    links = mdata.uns[TranslatorKeys.UNS][TranslatorKeys.LINKS]
    assert mdata.uns[TranslatorKeys.UNS]["params"]["n_cells"] == 150
    assert mdata.uns[TranslatorKeys.UNS]["params"]["window"] == 500_000
    assert set(links.columns) >= {"gene", "peak", "score", "sign", "direction", "rank", "distance"}

    # candidates only on the gene's chromosome and within 500 kb of its TSS
    genes = ss.tl.gene_positions(mdata["rna"].var).loc[links["gene"]]
    peaks = ss.tl.peak_positions(mdata["atac"].var).loc[links["peak"]]
    assert (genes["chrom"].to_numpy() == peaks["chrom"].to_numpy()).all()
    np.testing.assert_allclose(links["distance"], peaks["centre"].to_numpy() - genes["tss"].to_numpy())
    assert links["distance"].abs().max() <= 500_000
    # ranked by default by the distance x correlation link score; the attributions stay in `score`
    assert mdata.uns[TranslatorKeys.UNS]["params"]["rank_by"] == "link_score"
    expected = ss.tl.distance_correlation_score(links["distance"], links["correlation_z"])
    np.testing.assert_allclose(links["link_score"], expected)
    for _, group in links.groupby(
        ["direction", np.where(links["direction"] == "rna_to_atac", links["peak"], links["gene"])]
    ):
        ordered = group.sort_values("rank")["link_score"].to_numpy()
        assert (np.diff(ordered) <= 0).all()
    by_score = ss.tl.peak_gene_links(
        model,
        mdata,
        peaks=list(truth["peak"][:5]),
        direction="rna_to_atac",
        rank_by="score",
        n_steps=4,
        n_cells=50,
        copy=True,
    )
    for _, group in by_score.groupby("peak"):
        assert (np.diff(group.sort_values("rank")["score"].to_numpy()) <= 0).all()
    with pytest.raises(ValueError, match="needs a window"):
        ss.tl.peak_gene_links(model, mdata, window=None, n_top=3, rank_by="link_score")

    # restricted to the 30 linked genes and peaks, chance of a top-1 hit is 1/30;
    # measured 0.90-0.93 (peak -> gene) and 1.0 (gene -> peak) over two training seeds
    # (a single network: 0.27-0.53 and 0.9-0.93)
    top = links[links["rank"] == 1]
    to_atac = top[top["direction"] == "rna_to_atac"].set_index("peak").loc[truth["peak"], "gene"]
    to_rna = top[top["direction"] == "atac_to_rna"].set_index("gene").loc[truth["gene"], "peak"]
    assert (to_atac.to_numpy() == truth["gene"].to_numpy()).mean() >= 0.6
    assert (to_rna.to_numpy() == truth["peak"].to_numpy()).mean() >= 0.8

    # planted links are activating, and their genomic distance is reported
    hits = links.merge(truth, on=["gene", "peak"], suffixes=("", "_truth"))
    assert len(hits) >= 45  # measured 58-60 of the 60 planted pairs in the top 3
    assert (hits["sign"] == 1).mean() > 0.8
    np.testing.assert_array_equal(hits["distance"].to_numpy(), hits["distance_truth"].to_numpy())


def test_links_over_all_genes_far_above_chance(trained, sim):
    model, mdata = trained
    truth = sim.uns["simulation"]["links"]
    before = mdata.uns.get(TranslatorKeys.UNS)
    # no window: every gene is a candidate for every peak, the model alone has to find the link
    links = ss.tl.peak_gene_links(
        model,
        mdata,
        peaks=list(truth["peak"]),
        window=None,
        n_top=10,
        direction="rna_to_atac",
        n_cells=150,
        n_steps=8,
        copy=True,
    )
    assert mdata.uns.get(TranslatorKeys.UNS) is before  # copy=True leaves mdata alone
    assert set(links["direction"]) == {"rna_to_atac"} and len(links) == 10 * N_LINKS
    assert links["distance"].isna().all()
    top = links[links["rank"] == 1].set_index("peak").loc[truth["peak"], "gene"]
    # any of 300 genes: chance 1/300; measured 0.83-0.93 over two training seeds
    assert (top.to_numpy() == truth["gene"].to_numpy()).mean() >= 0.5


# --- output contract --------------------------------------------------------------------------


def test_translate_contract(trained, held_out):
    model, _ = trained
    rna, atac = held_out["test"]["rna"], held_out["test"]["atac"]
    pred = model.translate(rna, to="atac", batch_size=17)
    assert isinstance(pred, AnnData)
    assert pred.X.dtype == np.float32 and pred.shape == atac.shape
    assert pred.obs_names.equals(rna.obs_names) and pred.var_names.equals(atac.var_names)
    assert (pred.X >= 0).all() and (pred.X <= 1).all()
    np.testing.assert_allclose(
        pred.X, model.translate(rna, to="atac", batch_size=1000).X, rtol=1e-5, atol=1e-6
    )

    chosen = list(atac.var_names[[5, 2, 100]])
    sub = model.translate(rna, to="atac", features=chosen)
    assert list(sub.var_names) == chosen
    np.testing.assert_allclose(sub.X, pred[:, chosen].X, rtol=1e-5, atol=1e-6)

    # genes matched by name, whatever their order
    shuffled = rna[:, np.random.default_rng(0).permutation(rna.n_vars)].copy()
    np.testing.assert_allclose(model.translate(shuffled, to="atac").X, pred.X, rtol=1e-5, atol=1e-6)

    cp10k = model.translate(atac, to="rna", rna_scale="cp10k")
    np.testing.assert_allclose(cp10k.X.sum(axis=1), 1e4, rtol=1e-3)
    log_expr = model.translate(atac, to="rna")
    assert log_expr.var_names.equals(rna.var_names)
    # log1p is concave: the expected log1p CP10k lies below log1p of the expected CP10k
    assert log_expr.X.mean() < np.log1p(cp10k.X).mean()
    np.testing.assert_allclose(log_expr.X, model.translate(atac, to="rna", batch_size=50).X, rtol=1e-3)


def test_mudata_input_and_latent(trained, held_out):
    model, mdata = trained
    both = model.translate(mdata, to="atac", features=list(mdata["atac"].var_names[:4]))
    assert both.n_obs == mdata.n_obs
    z_rna = model.get_latent_representation(held_out["test"]["rna"], "rna")
    z_atac = model.get_latent_representation(held_out["test"]["atac"], "atac")
    assert z_rna.shape == (held_out["test"]["rna"].n_obs, 5 * 64)  # the members' latents side by side
    # the two encodings of a cell are closer than encodings of different cells
    own = np.linalg.norm(z_rna - z_atac, axis=1).mean()
    other = np.linalg.norm(z_rna - np.roll(z_atac, 1, axis=0), axis=1).mean()
    assert own < 0.9 * other


def test_attention(trained, held_out):
    model, _ = trained
    rna = held_out["test"]["rna"]
    att = model.get_attention(rna, "rna")
    assert att.shape == rna.shape and att.index.equals(rna.obs_names)
    np.testing.assert_allclose(att.sum(axis=1), 1, rtol=1e-4)
    assert (att.to_numpy()[rna.X.toarray() == 0] == 0).all()
    peaks = model.get_attention(held_out["test"]["atac"], "atac", features=["peak_00001", "peak_00002"])
    assert list(peaks.columns) == ["peak_00001", "peak_00002"]


def test_history_and_save_load(trained, held_out, tmp_path):
    model, mdata = trained
    for key in ("rna_from_atac_validation", "atac_from_rna_validation", "alignment_train", "validation_loss"):
        assert key in model.history
    assert model.history["atac_from_rna_train"].iloc[-1, 0] < model.history["atac_from_rna_train"].iloc[0, 0]
    model.save(tmp_path / "m", overwrite=True)
    loaded = ss.model.Translator.load(tmp_path / "m", adata=mdata)
    assert loaded.n_ensemble == 5
    rna = held_out["test"]["rna"]
    np.testing.assert_allclose(loaded.translate(rna).X, model.translate(rna).X, rtol=1e-5, atol=1e-6)


# --- ensemble ---------------------------------------------------------------------------------


def _member(model: ss.model.Translator, mdata, i: int) -> ss.model.Translator:
    """A single-network Translator with the weights of member ``i`` of ``model``."""
    single = ss.model.Translator(mdata, n_ensemble=1)
    single.module.members[0].load_state_dict(model.module.members[i].state_dict())
    single.is_trained_ = True
    return single


def test_ensemble_is_the_mean_of_its_members(trained):
    model, mdata = trained
    assert model.n_ensemble == 5 and "5 ensemble members" in model._model_summary_string
    weights = [m.atac_output.weight.detach() for m in model.module.members]
    assert not torch.allclose(weights[0], weights[1])  # independent initialisations

    rna, atac = mdata["rna"][:200].copy(), mdata["atac"][:200].copy()
    members = [_member(model, mdata, i) for i in range(5)]
    for to, source in (("atac", rna), ("rna", atac)):
        own = [m.translate(source, to=to).X for m in members]
        assert np.abs(own[0] - own[1]).mean() > 1e-3  # the members disagree ...
        # ... and the ensemble predicts their mean
        np.testing.assert_allclose(model.translate(source, to=to).X, np.mean(own, 0), rtol=1e-4, atol=1e-6)
    att = model.get_attention(rna, "rna")
    np.testing.assert_allclose(att.sum(axis=1), 1, rtol=1e-4)
    member_att = np.mean([m.get_attention(rna, "rna").to_numpy() for m in members], 0)
    np.testing.assert_allclose(att.to_numpy(), member_att, rtol=1e-4, atol=1e-7)
    z = model.get_latent_representation(rna, "rna")
    assert z.shape == (200, 5 * 64)
    np.testing.assert_allclose(
        z[:, 64:128], members[1].get_latent_representation(rna, "rna"), rtol=1e-5, atol=1e-6
    )


def test_ensemble_beats_its_members_on_translation_and_links(trained, sim):
    model, mdata = trained
    val = model.validation_indices
    rna, atac = mdata["rna"][val].copy(), mdata["atac"][val].copy()
    members = [_member(model, mdata, i) for i in range(5)]
    auprc = [translation_scores(atac, m.translate(rna, to="atac"), "atac")["auprc"] for m in members]
    together = translation_scores(atac, model.translate(rna, to="atac"), "atac")["auprc"]
    # measured (training seeds 0 / 1): AUPRC 0.186 against members 0.172-0.179 / 0.170 against 0.159-0.164
    assert together > max(auprc)

    truth = sim.uns["simulation"]["links"]

    def top1(translator) -> float:
        links = ss.tl.peak_gene_links(
            translator,
            mdata,
            peaks=list(truth["peak"]),
            window=None,
            n_top=10,
            direction="rna_to_atac",
            n_cells=150,
            n_steps=8,
            copy=True,
        )
        top = links[links["rank"] == 1].set_index("peak").loc[truth["peak"], "gene"]
        return (top.to_numpy() == truth["gene"].to_numpy()).mean()

    # any of 300 genes (chance 1/300); measured: the ensemble 0.93 / 0.83, its members 0.43-0.53 / 0.33-0.63;
    # each member finds some planted links, and averaging keeps those they agree on
    hits = top1(model)
    assert hits >= 0.6
    assert hits > max(top1(m) for m in members)


def test_single_network_weights_load_as_first_member(trained):
    model, mdata = trained
    rna = mdata["rna"][:100].copy()
    # weights saved before the module held members load as member 0
    single = _member(model, mdata, 0)
    old_state = {k.removeprefix("members.0."): v for k, v in single.module.state_dict().items()}
    assert "log_theta" in old_state
    fresh = ss.model.Translator(mdata, n_ensemble=1)
    fresh.module.load_state_dict(old_state)
    fresh.is_trained_ = True
    np.testing.assert_allclose(fresh.translate(rna).X, single.translate(rna).X, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bad", [0, 1.5, True])
def test_ensemble_size_errors(bad):
    mdata = _small()
    ss.model.Translator.setup_mudata(mdata)
    with pytest.raises(ValueError, match="n_ensemble"):
        ss.model.Translator(mdata, n_ensemble=bad)


# --- bad input --------------------------------------------------------------------------------


def _small(seed=1):
    return ss.datasets.simulate(120, 200, modalities="rna+atac", n_peaks=200, n_links=5, seed=seed)


def test_setup_errors():
    mdata = _small()
    with pytest.raises(KeyError, match="'chromatin'"):
        ss.model.Translator.setup_mudata(mdata, modalities={"atac_layer": "chromatin"})
    with pytest.raises(NotImplementedError, match="setup_mudata"):
        ss.model.Translator.setup_anndata(mdata["rna"])

    shuffled = _small()
    atac = shuffled["atac"][::-1].copy()
    with md.set_options(pull_on_update=False):
        mismatched = md.MuData({"rna": shuffled["rna"], "atac": atac})
    with pytest.raises(ValueError, match="same cells"):
        ss.model.Translator.setup_mudata(mismatched)

    lognorm = _small()
    x = lognorm["rna"].X.toarray()
    lognorm["rna"].X = sp.csr_matrix(np.log1p(x / x.sum(1, keepdims=True) * 1e4).astype(np.float32))
    with pytest.raises(ValueError, match="raw counts"):
        ss.model.Translator.setup_mudata(lognorm)

    negative = _small()
    negative["atac"].X = -negative["atac"].X
    with pytest.raises(ValueError, match="negative"):
        ss.model.Translator.setup_mudata(negative)


def _paired(atac: AnnData, rna: AnnData | None = None) -> md.MuData:
    rna = _small()["rna"] if rna is None else rna
    atac.obs_names = rna.obs_names
    with md.set_options(pull_on_update=False):
        return md.MuData({"rna": rna, "atac": atac})


def _adt_like(n_cells=120, n_proteins=140, seed=0) -> AnnData:
    """CITE-seq-like protein counts: ~140 antibodies, dense, with counts in the tens to hundreds."""
    rng = np.random.default_rng(seed)
    means = rng.lognormal(3.0, 1.0, size=n_proteins)
    counts = rng.negative_binomial(5, 5 / (5 + means), size=(n_cells, n_proteins)).astype(np.float32)
    names = [f"CD{i}" for i in range(1, n_proteins - 1)] + ["HLA-DR", "IgG1-isotype"]
    return AnnData(sp.csr_matrix(counts), var=pd.DataFrame(index=names))


def test_second_modality_must_look_like_accessibility():
    adt = _adt_like()
    with pytest.raises(
        ValueError, match=r"modality 'atac' does not look like chromatin accessibility"
    ) as error:
        ss.model.Translator.setup_mudata(_paired(adt))
    message = str(error.value)
    assert "'CD1'" in message and "no peak coordinates" in message and "ADT" in message
    assert "only 140 features" in message and "non-zero values are above 4" in message
    assert "setup_mudata" in message and "modalities={'atac_layer'" in message

    # binarised protein counts are still too few features without coordinates
    binary = adt.copy()
    binary.X = (binary.X > 20).astype(np.float32)
    with pytest.raises(ValueError, match=r"only 140 features") as error:
        ss.model.Translator.setup_mudata(_paired(binary))
    assert "non-zero values are above" not in str(error.value)

    # gene counts named as ATAC: many features, but large counts and no coordinates
    genes = _small(seed=2)["rna"]
    genes = AnnData(genes.X.copy(), var=pd.DataFrame(index=genes.var_names))
    with pytest.raises(ValueError, match="non-zero values are above 4"):
        ss.model.Translator.setup_mudata(_paired(genes))


def test_accessibility_is_recognised():
    sim = _small()
    assert {"chrom", "start", "end"} <= set(sim["atac"].var.columns)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ss.model.Translator.setup_mudata(sim)
    # the simulated multiome data pass; at most some never accessible peaks are reported
    assert all("accessible in no cell" in str(w.message) for w in caught), [str(w.message) for w in caught]

    rng = np.random.default_rng(0)
    x = sp.csr_matrix((rng.random((120, 300)) < 0.1).astype(np.float32))
    for names in (
        [f"chr{1 + i % 3}:{1000 * i}-{1000 * i + 500}" for i in range(300)],
        [f"chr{1 + i % 3}-{1000 * i}-{1000 * i + 500}" for i in range(300)],
        [f"chrUn_KI270742v1_{1000 * i}_{1000 * i + 500}" for i in range(300)],
    ):
        ss.model.Translator.setup_mudata(_paired(AnnData(x.copy(), var=pd.DataFrame(index=names))))
    columns = pd.DataFrame(
        {"Chromosome": "chr1", "Start": np.arange(300) * 1000, "End": np.arange(300) * 1000 + 500},
        index=[f"region{i}" for i in range(300)],
    )
    ss.model.Translator.setup_mudata(_paired(AnnData(x.copy(), var=columns)))
    # many 0/1 features without coordinates are accepted as peaks
    wide = sp.csr_matrix((rng.random((120, 1500)) < 0.05).astype(np.float32))
    names = pd.DataFrame(index=[f"peak{i}" for i in range(1500)])
    ss.model.Translator.setup_mudata(_paired(AnnData(wide, var=names)))
    # peaks with coordinates but protein-like counts: a warning
    counts = AnnData(_adt_like(n_proteins=300).X, var=pd.DataFrame(index=columns.index).join(columns))
    with pytest.warns(UserWarning, match="has peak coordinates, but .* non-zero values are above 4"):
        ss.model.Translator.setup_mudata(_paired(counts))


def test_not_set_up_messages_name_setup_mudata():
    mdata = _small()
    with pytest.raises(
        ValueError, match=r"not set up for the Translator: run Translator.setup_mudata\(mdata\)"
    ):
        ss.model.Translator(mdata)
    with pytest.raises(ValueError, match=r"needs a MuData .* Translator.setup_mudata") as error:
        ss.model.Translator(mdata["rna"])
    assert "setup_anndata is not available" in str(error.value)
    ss.model.Translator.setup_mudata(mdata)
    model = ss.model.Translator(mdata, n_ensemble=1)
    with pytest.raises(ValueError, match=r"Translator.setup_mudata\(mdata\) first"):
        model.get_anndata_manager(_small(seed=3), required=True)
    assert model.get_anndata_manager(mdata, required=True) is model.adata_manager


def test_peaks_never_accessible_warn():
    mdata = _small()
    x = mdata["atac"].X.tolil()
    x[:, :3] = 0
    mdata["atac"].X = sp.csr_matrix(x)
    with pytest.warns(
        UserWarning, match=r"\d+ of 200 peaks in adata.X of modality 'atac' are accessible in no cell"
    ):
        ss.model.Translator.setup_mudata(mdata)


def test_query_errors(trained, held_out):
    model, _ = trained
    rna, atac = held_out["test"]["rna"], held_out["test"]["atac"]
    with pytest.raises(ValueError, match="'atac' or 'rna'|'rna' or 'atac'"):
        model.translate(rna, to="protein")
    with pytest.raises(ValueError, match="only 100 of the model's 300 genes"):
        model.translate(rna[:, :100].copy(), to="atac")
    with pytest.warns(UserWarning, match="missing from the query"):
        model.translate(rna[:, :250].copy(), to="atac")
    with pytest.raises(KeyError, match="not in the model"):
        model.translate(rna, to="atac", features=["peak_00001", "chr1_1_2"])
    x = rna.X.toarray()
    lognorm = AnnData(np.log1p(x / x.sum(1, keepdims=True) * 1e4), obs=rna.obs, var=rna.var)
    with pytest.raises(ValueError, match="raw RNA counts"):
        model.translate(lognorm, to="atac")
    with pytest.raises(KeyError, match="no 'atac' modality"):
        model.translate(md.MuData({"rna": rna}), to="rna")
    with pytest.raises(ValueError, match="baseline"):
        ss.tl.peak_gene_links(model, trained[1], baseline="random")
    with pytest.raises(ValueError, match="pass n_top"):
        ss.tl.peak_gene_links(model, trained[1], window=None)
    no_coordinates = trained[1].copy()
    no_coordinates["rna"].var = pd.DataFrame(index=no_coordinates["rna"].var_names)
    with pytest.raises(KeyError, match="gene coordinates"):
        ss.tl.peak_gene_links(model, no_coordinates, peaks=["peak_00001"])
    assert isinstance(translation_scores(atac, model.translate(rna, features=None), "atac")["auroc"], float)
    with pytest.raises(ValueError, match="shapes"):
        translation_scores(atac, model.translate(rna, features=list(atac.var_names[:3])), "atac")


def test_expected_log1p_cp10k_matches_sampling():
    from scsalient.model.translator._expectation import expected_log1p_cp10k

    torch.manual_seed(0)
    log_rho = torch.log(torch.tensor([[0.001, 0.01, 0.3, 0.689]]))
    log_library = torch.log(torch.tensor([500.0]))
    theta = torch.tensor([0.5, 2.0, 5.0, 1.0])
    exact = expected_log1p_cp10k(log_rho, log_library, theta)[0]
    mu = log_rho.exp()[0] * 500
    counts = torch.poisson(torch.distributions.Gamma(theta, theta / mu).sample((100_000,)))
    sampled = torch.log1p(counts * (1e4 / 500)).mean(0)
    # means 0.5 and 5 (exact sum), 150 and 344 (gamma approximation)
    np.testing.assert_allclose(exact.numpy(), sampled.numpy(), atol=0.03)
