"""The Translator's cheaper training computations against the maths they replace."""

from __future__ import annotations

import torch
from scvi import REGISTRY_KEYS

from scsalient.model.translator._module import TranslatorModule

N_GENES, N_PEAKS, N_CELLS = 30, 500, 16


def _module(**kwargs) -> TranslatorModule:
    torch.manual_seed(0)
    module = TranslatorModule(N_GENES, N_PEAKS, n_members=2, atac_attention_rank=8, **kwargs)
    for p in module.parameters():  # random weights everywhere (the attention map starts at zero)
        torch.nn.init.normal_(p, std=0.1)
    return module


def _tensors(empty_cell: bool = True) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    rna = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=g) * 3)
    atac = (torch.rand(N_CELLS, N_PEAKS, generator=g) < 0.02).float() * 2  # counts: binarised inside
    if empty_cell:
        atac[3] = 0  # a nucleus with no accessible region
    return {REGISTRY_KEYS.X_KEY: rna, REGISTRY_KEYS.ATAC_X_KEY: atac}


def _run(module: TranslatorModule, tensors: dict, dense: bool) -> dict:
    module.zero_grad()
    if dense:  # the maths as it was written first: every region through attention and encoder
        module.reads_entries = lambda *args: False
    inference, _, loss = module(tensors)
    loss.loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}
    return {
        "z": inference["z_atac"].detach(),
        "attention": inference["attention_atac"],
        "loss": loss,
        "grads": grads,
    }


def test_sparse_accessibility_encoder_is_the_dense_maths():
    tensors = _tensors()
    module = _module(n_layers=2, dropout=0.0)
    assert module.reads_entries("atac", module.prepare("atac", tensors[REGISTRY_KEYS.ATAC_X_KEY]))
    sparse = _run(module, tensors, dense=False)
    dense = _run(module, tensors, dense=True)
    torch.testing.assert_close(sparse["z"], dense["z"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(sparse["loss"].loss, dense["loss"].loss)
    assert sparse["grads"].keys() == dense["grads"].keys()
    for name, grad in dense["grads"].items():
        torch.testing.assert_close(sparse["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    # the attention of the regions each nucleus has (an empty one has none)
    present = tensors[REGISTRY_KEYS.ATAC_X_KEY] > 0
    attention = sparse["attention"].to_dense().detach()
    torch.testing.assert_close(attention[present], dense["attention"].detach()[present])
    assert (attention[~present] == 0).all()
    torch.testing.assert_close(attention.sum(1)[present.any(1)], torch.ones(N_CELLS - 1))


def test_dense_inputs_and_full_attention_keep_the_dense_maths():
    module = _module()
    h = module.prepare("atac", (torch.rand(N_CELLS, N_PEAKS) < 0.5).float())
    assert not module.reads_entries("atac", h)  # half the regions accessible: dense is cheaper
    full = TranslatorModule(N_GENES, N_PEAKS, atac_attention_rank=None)
    assert not full.reads_entries("atac", (h[:, :N_PEAKS] > 2).float())


def test_read_outs_from_sparse_accessibility_are_the_dense_maths():
    """translate, the latent and the attention read sparse accessibility from its entries, unchanged."""
    import anndata as ad
    import mudata as md
    import numpy as np
    from scipy import sparse

    import scsalient as ss

    rng = np.random.default_rng(0)
    n_cells = 120
    rna = ad.AnnData(sparse.csr_matrix(rng.poisson(2.0, (n_cells, N_GENES)).astype(np.float32)))
    rna.var_names = [f"g{i}" for i in range(N_GENES)]
    atac_x = (rng.random((n_cells, N_PEAKS)) < 0.02).astype(np.float32)
    atac = ad.AnnData(sparse.csr_matrix(atac_x))
    atac.var_names = [f"chr1:{1000 * i}-{1000 * i + 500}" for i in range(N_PEAKS)]
    with md.set_options(pull_on_update=False):
        mdata = md.MuData({"rna": rna, "atac": atac})
    ss.model.Translator.setup_mudata(mdata)
    model = ss.model.Translator(mdata, n_ensemble=2, atac_attention_rank=8)  # low rank, as with many regions
    model.train(max_epochs=1, enable_progress_bar=False)
    module = model.module
    assert module.reads_entries("atac", module.prepare("atac", torch.as_tensor(atac_x)))
    calls = []
    encode_sparse = module.encode_sparse
    module.encode_sparse = lambda *args: calls.append(1) or encode_sparse(*args)
    outputs = {
        "rna": model.translate(mdata["atac"], to="rna").X,
        "latent": model.get_latent_representation(mdata["atac"], modality="atac"),
        "attention": model.get_attention(mdata["atac"], "atac").to_numpy(),
    }
    assert len(calls) >= 3  # every read-out took the sparse path
    module.reads_entries = lambda *args: False  # the dense maths
    dense = {
        "rna": model.translate(mdata["atac"], to="rna").X,
        "latent": model.get_latent_representation(mdata["atac"], modality="atac"),
        "attention": model.get_attention(mdata["atac"], "atac").to_numpy(),
    }
    for key, value in dense.items():
        np.testing.assert_allclose(outputs[key], value, rtol=1e-4, atol=1e-5, err_msg=key)
