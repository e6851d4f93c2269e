"""Batch-difference augmentation shared by the classifiers."""

import numpy as np
import torch

from scsalient.model.base._augment import AUGMENT_CLAMP, BatchShift, batch_difference_vectors


def test_batch_difference_vectors_on_known_centroids():
    # two cell types x three donors; donor 1 of type 0 has gene 0 raised by exactly 1.0 (log scale)
    rng = np.random.default_rng(0)
    n_per, n_genes = 12, 6
    labels = np.repeat([0, 0, 0, 1, 1, 1], n_per)
    donors = np.repeat([0, 1, 2, 0, 1, 2], n_per)
    x = np.full((len(labels), n_genes), 2.0) + rng.normal(0, 0.01, (len(labels), n_genes))
    x[(labels == 0) & (donors == 1), 0] += 1.0
    x[(labels == 1) & (donors == 2), 1] += 3.0  # clipped to 1.5
    vectors = batch_difference_vectors(
        x, np.arange(len(labels)), labels, donors, normalize=False, min_cells=10
    )
    assert vectors.shape == (4, n_genes)  # 3 pairs per type, minus the all-zero pair of type 1
    assert np.all(np.abs(vectors[:, 2:]) == 0)  # noise below 0.25 is zeroed
    np.testing.assert_allclose(
        sorted(np.abs(vectors[:, 0])[np.abs(vectors[:, 0]) > 0]), [1.0, 1.0], atol=0.05
    )
    assert np.allclose(sorted(np.abs(vectors[:, 1])[np.abs(vectors[:, 1]) > 0]), [1.5, 1.5])
    # too few cells per (type, donor): nothing to learn from
    assert len(batch_difference_vectors(x, np.arange(len(labels)), labels, donors, normalize=False)) == 4
    assert batch_difference_vectors(x, np.arange(20), labels, donors, normalize=False).shape == (0, n_genes)


def test_batch_shift_adds_a_signed_vector_and_clamps():
    torch.manual_seed(0)
    shift = BatchShift(3)
    x = torch.full((500, 3), 1.0)
    assert torch.equal(shift(x), x)  # no vectors: unchanged
    assert shift(x, n_draws=2).shape == (2, 500, 3)
    shift.set_vectors(np.array([[0.5, 0.0, -2.0]], dtype=np.float32))
    out = shift(x)
    # each cell got +v or -v, and the result is clamped to the log1p(CP10k) range
    plus = torch.tensor([1.5, 1.0, 0.0])
    minus = torch.tensor([0.5, 1.0, 3.0])
    is_plus = (out == plus).all(dim=1)
    is_minus = (out == minus).all(dim=1)
    assert bool((is_plus | is_minus).all())
    assert 150 < int(is_plus.sum()) < 350  # random signs
    assert float(out.min()) >= AUGMENT_CLAMP[0]
    members = shift(x, n_draws=4)
    assert members.shape == (4, 500, 3) and not torch.equal(members[0], members[1])
    # outside training the cells pass through unchanged (repeated per member)
    shift.eval()
    assert torch.equal(shift(x), x)
    assert torch.equal(shift(x, n_draws=4), x.expand(4, *x.shape))
    shift.train()
    # the vectors are saved with the module and restored whatever their number
    fresh = BatchShift(3)
    fresh.load_state_dict(shift.state_dict())
    assert torch.equal(fresh.vectors, shift.vectors)
