"""The classifiers' prediction path: checks of the query, blocks read from it, forward passes."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from scsalient.model.base._blocks import read_rows
from scsalient.model.base._checks import _all_integer, scan_expression


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
