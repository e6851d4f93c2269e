"""The classifiers' prediction path: checks of the query, blocks read from it, forward passes."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from torch.utils._python_dispatch import TorchDispatchMode

import scsalient as ss
from scsalient._constants import NACTKeys, SCTABKeys
from scsalient.model.base._blocks import prediction_block_size, read_rows
from scsalient.model.base._checks import _all_integer, scan_expression

#: more genes than 2**19 / 1024, so that the default blocks are smaller than 1,024 cells
N_GENES = 1500
SMALL = {
    "nact": ("NACT", {"n_latent": 8, "attention_rank": 8}),
    "nact_ensemble": ("NACT", {"n_latent": 8, "attention_rank": 8, "n_ensemble": 2}),
    "sctab": ("SCTAB", {"n_ensemble": 2, "n_d": 8, "n_a": 8}),
}


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(n_cells=800, n_genes=N_GENES, n_cell_types=3, n_donors=2, seed=3)


@pytest.fixture(scope="module", params=list(SMALL))
def trained(request, sim):
    import scvi

    scvi.settings.seed = 0
    name, settings = SMALL[request.param]
    adata = sim[:300].copy()
    cls = getattr(ss.model, name)
    cls.setup_anndata(adata, labels_key="cell_type")
    model = cls(adata, **settings)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def _awkward_query(sim: ad.AnnData) -> tuple[ad.AnnData, list[str]]:
    """Genes shuffled, 10% of the model's genes missing, two unknown genes, and two cells that
    express only genes the model lacks (missing or unknown ones); returns the query and those cells."""
    rng = np.random.default_rng(0)
    query = sim[300:].copy()
    keep = np.sort(rng.permutation(sim.n_vars)[: int(0.9 * sim.n_vars)])
    dropped = np.setdiff1d(np.arange(sim.n_vars), keep)
    x = query.X.toarray()
    empty = [3, 250]
    x[empty] = 0.0
    x[empty[0], dropped[:5]] = 4.0  # expresses only genes the query lacks: dropped below
    unknown = np.zeros((query.n_obs, 2), dtype=x.dtype)
    unknown[empty[1]] = [7.0, 2.0]  # and only genes the model never saw
    x = np.hstack([x[:, keep], unknown])
    names = list(query.var_names[keep]) + ["unknown_a", "unknown_b"]
    order = rng.permutation(len(names))
    out = ad.AnnData(
        sparse.csr_matrix(x[:, order]),
        obs=query.obs[[]].copy(),
        var=pd.DataFrame(index=pd.Index(names)[order]),
    )
    return out, list(out.obs_names[empty])


def _direct_probabilities(model, query: ad.AnnData) -> np.ndarray:
    """Class probabilities of every cell from one forward pass of the module over the whole query,
    the query's genes placed by hand in the model's order (zeros for the missing ones)."""
    genes = pd.Index(model.get_var_names())
    source = pd.Index(query.var_names).get_indexer(genes)
    x = np.zeros((query.n_obs, len(genes)), dtype=np.float32)
    x[:, source >= 0] = query.X.toarray()[:, source[source >= 0]]
    model.module.eval()
    with torch.inference_mode():
        tensors = {REGISTRY_KEYS.X_KEY: torch.as_tensor(x)}
        out = model.module.inference(**model.module._get_inference_input(tensors))
        return torch.softmax(out["logits"], dim=-1).numpy()


def test_predictions_are_those_of_a_direct_forward_pass(trained, sim):
    model = trained
    query, empty = _awkward_query(sim)
    expected = _direct_probabilities(model, query)
    is_empty = query.obs_names.isin(empty)
    expected[is_empty] = np.nan
    with pytest.warns(UserWarning, match="no expression in any of the model's genes"):
        soft = model.predict(query, soft=True)
    np.testing.assert_allclose(soft.to_numpy(), expected, rtol=1e-5, atol=1e-6)
    assert list(soft.index) == list(query.obs_names) and list(soft.columns) == list(model.classes)
    for batch_size in (7, 100_000):  # blocks of any size give the same values
        with pytest.warns(UserWarning, match="no expression"):
            other = model.predict(query, soft=True, batch_size=batch_size)
        np.testing.assert_allclose(other.to_numpy(), soft.to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.warns(UserWarning, match="no expression"):
        labels = model.predict(query)
    assert list(labels[is_empty]) == [None, None]
    np.testing.assert_array_equal(labels[~is_empty], model.classes[expected[~is_empty].argmax(axis=1)])

    annotated = query.copy()
    with pytest.warns(UserWarning, match="no expression"):
        model.annotate(annotated, explanation=False, latent=False, min_confidence=None)
    keys = model._keys
    np.testing.assert_allclose(annotated.obsm[keys.PROBABILITIES].to_numpy(), soft.to_numpy(), atol=1e-7)
    prediction = annotated.obs[keys.PREDICTION]
    assert prediction[is_empty].isna().all()
    np.testing.assert_array_equal(prediction[~is_empty].astype(str).to_numpy(), labels[~is_empty])
    top = np.where(is_empty, np.nan, np.nan_to_num(expected).max(axis=1))
    confidence = (
        1.0 - annotated.obs[SCTABKeys.UNCERTAINTY]
        if keys is SCTABKeys
        else annotated.obs[NACTKeys.CONFIDENCE]
    )
    np.testing.assert_allclose(confidence.to_numpy(), top, rtol=1e-5, atol=1e-6)
    assert keys.LATENT not in annotated.obsm and keys.EXPLANATION not in annotated.obsm


class _Recorder:
    """Wraps a module's ``inference`` and records the cells of each forward pass."""

    def __init__(self, module, monkeypatch):
        self.sizes: list[int] = []
        inference = module.inference

        def recorded(*args, **kwargs):
            x = kwargs.get("x", args[0] if args else None)
            self.sizes.append(int(x.shape[0]))
            return inference(*args, **kwargs)

        monkeypatch.setattr(module, "inference", recorded)


def test_default_blocks_are_sized_to_the_number_of_genes(trained, sim, monkeypatch):
    # cells x genes intermediates of a few MiB stay in the CPU's cache: with 1,500 genes the
    # default block is 349 cells, not 1,024
    model = trained

    def per_batch_loader(*args, **kwargs):
        raise AssertionError("prediction slices blocks from the matrix, not scvi-tools' loader")

    monkeypatch.setattr(model, "_make_data_loader", per_batch_loader)
    recorder = _Recorder(model.module, monkeypatch)
    model.predict(sim, soft=True)
    block = prediction_block_size(N_GENES)
    assert block == 2**19 // N_GENES < sim.n_obs
    assert recorder.sizes == [block, block] + [sim.n_obs - 2 * block]
    recorder.sizes.clear()
    model.annotate(sim.copy(), explanation=False, latent=False)
    assert max(recorder.sizes) == block
    recorder.sizes.clear()
    model.predict(sim, soft=True, batch_size=500)
    assert recorder.sizes == [500, sim.n_obs - 500]


def test_backed_prediction_cuts_its_blocks_from_large_reads(trained, sim, tmp_path, monkeypatch):
    # each read of a backed file has a fixed cost: blocks of 349 cells are cut from reads of two
    # blocks (at most 1,024 cells), and the predictions are those of the data in memory
    from scsalient.model.base import _blocks

    model = trained
    path = tmp_path / "query.h5ad"
    sim.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    reads = []
    original = _blocks._read_slice
    monkeypatch.setattr(_blocks, "_read_slice", lambda x, rows: reads.append(len(rows)) or original(x, rows))
    try:
        probs = model.predict(backed, soft=True)
    finally:
        backed.file.close()
    block = prediction_block_size(N_GENES)
    assert reads == [2 * block, sim.n_obs - 2 * block]
    np.testing.assert_allclose(
        probs.to_numpy(), model.predict(sim, soft=True).to_numpy(), rtol=1e-5, atol=1e-6
    )
    reads.clear()
    model.predict(sim, soft=True)  # in memory: one slice per block, nothing read twice
    assert reads == [block, block, sim.n_obs - 2 * block]


def test_prediction_block_size_bounds():
    assert prediction_block_size(2_511) == 208  # Kang PBMCs
    assert prediction_block_size(15_073) == 64  # at least 64 cells
    assert prediction_block_size(60_000) == 64
    assert prediction_block_size(100) == 1024  # at most 1,024 cells


def test_annotate_with_majority_voting_is_one_pass(trained, sim, monkeypatch):
    model = trained
    calls = []
    iterate = model._iter_inference

    def counted(*args, **kwargs):
        calls.append(args[3] if len(args) > 3 else kwargs.get("keys"))
        return iterate(*args, **kwargs)

    monkeypatch.setattr(model, "_iter_inference", counted)
    query = sim[300:700].copy()
    model.annotate(query, majority_voting=True, latent=False, explanation=False)
    assert len(calls) == 1  # the latent representation is read in the same pass, not stored
    assert model._keys.MAJORITY_VOTING in query.obs and model._keys.LATENT not in query.obsm


class _NewCellGeneArrays(TorchDispatchMode):
    """Counts the operations that allocate a new array of at least ``size`` values."""

    def __init__(self, size: int):
        super().__init__()
        self.size = size
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor)}
        for tensor in out if isinstance(out, tuple | list) else (out,):
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.numel() >= self.size
                and tensor.untyped_storage().data_ptr() not in inputs
            ):
                self.count += 1
        return out


def test_nact_prediction_allocates_few_cell_gene_arrays(sim):
    # at prediction, each cells x genes array is time spent filling memory: the normalised input,
    # the attention (computed in place), its mask and the gene scores are all a network needs
    from scsalient.model.nact import NACTModule

    torch.manual_seed(0)
    module = NACTModule(N_GENES, 3, n_latent=8, attention_rank=8).eval()
    with torch.no_grad():
        module.members[0].keys.normal_(0, 0.1)
        module.members[0].gate_bias.normal_(0, 0.5)
    x = torch.as_tensor(sim.X[:200].toarray(), dtype=torch.float32)
    with torch.inference_mode():
        fast = module.inference(x)
        counter = _NewCellGeneArrays(x.numel())
        with counter:
            module.inference(x)
    assert counter.count <= 4
    with torch.enable_grad():  # the training path, out of place, gives the same numbers
        slow = module.inference(x)
    for key in ("logits", "member_logits", "attention", "scores", "latent"):
        assert torch.equal(fast[key], slow[key].detach()), key
    odd = torch.zeros(2, N_GENES)
    odd[0, :4] = torch.tensor([-0.0, -1.5, 2.0, 1e-30])  # the mask is x != 0, whatever the sign
    with torch.inference_mode():
        fast_gate = module.members[0].attention(odd)
    with torch.enable_grad():
        slow_gate = module.members[0].attention(odd)
    assert torch.equal(fast_gate, slow_gate.detach())
    assert fast_gate[0, 0] == 0 and (fast_gate[0, 1:4] > 0).all()
    expressed = x > 0
    assert (fast["attention"][~expressed] == 0).all() and (fast["attention"][expressed] > 0).all()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_integer_check_agrees_with_the_remainder(dtype):
    values = np.array(
        [0.0, -0.0, 1.0, 3.0, 2.0**24, 2.0**24 + 2, 1e10, 0.5, 1.25, 1e-7, 1e4 + 0.5], dtype=dtype
    )
    for value in values[np.isfinite(values)]:  # non-finite values are refused before this check
        one = np.array([1.0, value], dtype=dtype)
        assert _all_integer(one) == bool(np.all(np.mod(one, 1) == 0)), value
    assert _all_integer(np.array([1, 2, 3], dtype=np.int32)) and _all_integer(np.array([True, False]))


def test_scan_tells_counts_from_non_integers():
    counts = sparse.random(50, 40, density=0.3, format="csr", random_state=0, dtype=np.float32)
    counts.data = np.ceil(counts.data * 10)
    assert scan_expression(counts, "adata.X").integer
    counts.data[7] += 0.5
    assert not scan_expression(counts, "adata.X").integer


@pytest.mark.parametrize("kind", ["csr", "dense"])
def test_read_rows_copies_and_keeps_the_order(kind):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    matrix = sparse.csr_matrix(x) if kind == "csr" else x.copy()
    for rows in (np.arange(4, 11), np.array([9, 2, 3, 15]), np.array([5])):
        block = read_rows(matrix, rows)
        dense = block.toarray() if sparse.issparse(block) else block
        np.testing.assert_array_equal(dense, x[rows])
        if sparse.issparse(block):
            block.data[:] = -1
        else:
            block[:] = -1
        after = matrix.toarray() if sparse.issparse(matrix) else matrix
        np.testing.assert_array_equal(after, x)  # the user's matrix is never written to
