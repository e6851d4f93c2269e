"""The classifiers' prediction path: checks of the query, blocks read from it, forward passes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from torch.utils._python_dispatch import TorchDispatchMode

import scsalient as ss
from scsalient.model.base._blocks import read_rows
from scsalient.model.base._checks import _all_integer, scan_expression

#: genes of the simulated data
N_GENES = 1500


@pytest.fixture(scope="module")
def sim():
    return ss.datasets.simulate(n_cells=800, n_genes=N_GENES, n_cell_types=3, n_donors=2, seed=3)


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
