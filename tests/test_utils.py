"""Small shared helpers."""

from __future__ import annotations

import numpy as np

from scsalient._utils import group_sums


def test_group_sums_is_add_at():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 5, 200)
    codes[codes == 3] = 4  # group 3 empty
    values = rng.normal(size=(200, 30)).astype(np.float32)
    expected = np.zeros((6, 30))
    np.add.at(expected, codes, values)
    result = group_sums(codes, values, 6)
    assert result.shape == (6, 30) and result.dtype == np.float64
    np.testing.assert_allclose(result, expected, rtol=1e-12, atol=1e-12)
    assert not result[3].any() and not result[5].any()
    counts = group_sums(codes, np.ones((200, 1), dtype=bool), 6)[:, 0]
    np.testing.assert_array_equal(counts, np.bincount(codes, minlength=6))
