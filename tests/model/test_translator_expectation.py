"""The fast expectation of log1p(CP10k) that ATAC -> RNA translation returns, against exact sums."""

from __future__ import annotations

import numpy as np
import torch

from scsalient.model.translator._expectation import expected_log1p_cp10k, expected_log1p_cp10k_exact


def _grid(max_mean: float = 300.0):
    """Libraries 25-10,000 (scale factors 400-1) x means 0.001-``max_mean`` x inverse dispersions 0.05-100."""
    library = torch.tensor([25.0, 500.0, 2_000.0, 10_000.0], dtype=torch.float64)
    mean = torch.logspace(-3, np.log10(max_mean), 11, dtype=torch.float64)
    theta = torch.logspace(np.log10(0.05), 2, 7, dtype=torch.float64)
    m, t = torch.meshgrid(mean, theta, indexing="ij")
    m, t = m.reshape(-1), t.reshape(-1)
    log_rho = (m[None, :] / library[:, None]).clamp_max(1.0).log()  # mu <= library
    return log_rho, library.log(), t


def _old_truncated_sum(log_rho, log_library, theta, max_count: int = 512) -> torch.Tensor:
    """The expectation translate used before: an explicit sum over the counts up to ``max_count``."""
    library = log_library.exp()[:, None]
    m = log_rho.exp() * library
    t = theta.expand_as(m)
    c = (1e4 / library).expand_as(m)
    k = torch.arange(max_count + 1, dtype=m.dtype)
    log_pmf = (
        torch.lgamma(k + t[..., None])
        - torch.lgamma(t[..., None])
        - torch.lgamma(k + 1)
        + t[..., None] * (t.log() - (t + m).log())[..., None]
        + k * (m.log() - (t + m).log())[..., None]
    )
    return (log_pmf.exp() * torch.log1p(c[..., None] * k)).sum(-1)


def test_fast_expectation_matches_the_exact_sum():
    log_rho, log_library, theta = _grid()
    exact = expected_log1p_cp10k_exact(log_rho, log_library, theta, max_count=60_000)
    fast = expected_log1p_cp10k(log_rho, log_library, theta)
    error = (fast - exact).abs()
    assert error.max() < 0.01
    assert error.median() < 1e-4
    # in float32, as translate runs it
    fast32 = expected_log1p_cp10k(log_rho.float(), log_library.float(), theta.float())
    assert (fast32.double() - exact).abs().max() < 0.01


def test_fast_expectation_matches_the_old_sum_where_that_was_exact():
    log_rho, log_library, theta = _grid(max_mean=50.0)
    keep = theta >= 1.0  # here the counts beyond 512 carry no mass, so the old truncated sum is exact
    log_rho, theta = log_rho[:, keep], theta[keep]
    old = _old_truncated_sum(log_rho, log_library, theta)
    fast = expected_log1p_cp10k(log_rho, log_library, theta)
    np.testing.assert_allclose(fast.numpy(), old.numpy(), atol=0.01)


def test_fast_expectation_is_right_where_the_old_one_was_not():
    # mean 200, inverse dispersion 0.1: most cells have no count, yet the old large-mean
    # approximation log(c mu / theta) + digamma(theta) gave a large negative value
    log_rho = torch.log(torch.tensor([[200.0 / 2_000.0]], dtype=torch.float64))
    log_library = torch.log(torch.tensor([2_000.0], dtype=torch.float64))
    theta = torch.tensor([0.1], dtype=torch.float64)
    exact = expected_log1p_cp10k_exact(log_rho, log_library, theta, max_count=60_000)
    gamma_approximation = float(torch.log(torch.tensor(5.0 * 200 / 0.1)) + torch.digamma(theta))
    assert abs(gamma_approximation - float(exact)) > 1.0
    assert float((expected_log1p_cp10k(log_rho, log_library, theta) - exact).abs()) < 0.01
