r"""Expected log1p(CP10k) of negative binomial counts, fast.

The Translator predicts, for each cell and gene, a negative binomial :math:`k \sim
\mathrm{NB}(\mu, \theta)` of counts at library size :math:`\ell`; the expression users compare
and score is :math:`\log(1 + c k)` with :math:`c = 10^4 / \ell`. Its expectation has no closed
form. :func:`expected_log1p_cp10k` sums it exactly over the counts :math:`k \le 16` (the
probabilities by their recurrence, no special functions) and integrates the rest of the
distribution, :math:`k > 16`, over a 48-point geometric grid of :math:`k` (the probability
mass function through ``lgamma``, trapezoid rule in :math:`\log k`), only for the entries that
have any mass there. Against the exact sum over all counts the absolute error is below 0.01
(measured at most 0.006, median below :math:`10^{-5}`) over means 0.001-300, inverse
dispersions 0.05-100 and library sizes 25-10,000 (``tests/model/test_translator_expectation.py``).
It replaced a sum over the counts up to 512, which took 15 s for 841 MOp cells x 1,677 genes
and, above a mean of 100 counts, used the expected log of the gamma rate, which is far off
when the inverse dispersion is small (most counts 0).
"""

from __future__ import annotations

import torch

#: counts summed exactly; the mass beyond is integrated on a grid
HEAD_COUNTS = 16
#: points of the geometric grid over the counts beyond ``HEAD_COUNTS``
TAIL_POINTS = 48
#: tail mass below which the tail is left out
TAIL_MASS = 1e-4


def expected_log1p_cp10k(
    log_rho: torch.Tensor, log_library: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    r"""Expectation of :math:`\log(1 + 10^4 k / \ell)` for :math:`k \sim \mathrm{NB}(\ell \rho, \theta)`.

    Parameters
    ----------
    log_rho
        Log normalised expression :math:`\log \rho`, cells x genes.
    log_library
        Log library size :math:`\log \ell` of each cell.
    theta
        Inverse dispersion of each gene (broadcast against ``log_rho``).

    Returns
    -------
    Tensor like ``log_rho``. Deterministic (no sampling noise).
    """
    library = log_library.exp()[:, None]
    mu = (log_rho.exp() * library).clamp_min(1e-12)
    theta = theta.expand_as(mu)
    c = 1e4 / library
    counts = torch.arange(1, HEAD_COUNTS + 1, dtype=mu.dtype, device=mu.device)
    value = torch.log1p(c * counts)  # log1p(c k) of each cell, k = 1..HEAD_COUNTS
    q = mu / (mu + theta)
    p = torch.exp(theta * torch.log1p(-q))  # P(k = 0), then P(k) by its recurrence
    remaining = 1 - p  # P(k > current count)
    out = torch.zeros_like(mu)
    for k in range(1, _DENSE_COUNTS + 1):  # every entry: the first counts hold most of the mass
        p = p * ((k - 1 + theta) / k) * q
        out += p * value[:, k - 1 : k]
        remaining -= p
    active = torch.nonzero(remaining > TAIL_MASS, as_tuple=True)  # the few entries with mass left
    if active[0].numel() == 0:
        return out
    cell = active[0]
    p, remaining, t, qa = p[active], remaining[active], theta[active], q[active]
    extra = torch.zeros_like(p)
    for k in range(_DENSE_COUNTS + 1, HEAD_COUNTS + 1):
        p = p * ((k - 1 + t) / k) * qa
        extra += p * value[cell, k - 1]
        remaining -= p
    need = remaining > TAIL_MASS
    extra[need] += _tail(mu[active][need], t[need], c[cell[need], 0], qa[need])
    out[active] += extra
    return out


#: counts summed over every entry before the entries without remaining mass are set aside
_DENSE_COUNTS = 4


def _tail(mu: torch.Tensor, theta: torch.Tensor, c: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Sum over the counts above ``HEAD_COUNTS``, as an integral over a geometric grid."""
    m, t, cc, qq = mu[:, None], theta[:, None], c[:, None], q[:, None]
    sd = torch.sqrt(m + m * m / t)
    # midpoint rule: count k covers [k - 1/2, k + 1/2]; the mass 6 sd below the mean is negligible
    low = (m - 6 * sd).clamp_min(HEAD_COUNTS + 0.5)
    # beyond: 10 sd, and 25 scales of the gamma mixing the Poisson (the heavy tail when theta < 1)
    high = (m + 10 * sd + 25 * m / t).clamp_min(HEAD_COUNTS + 2.0)
    grid = torch.linspace(0, 1, TAIL_POINTS, dtype=mu.dtype, device=mu.device)[None, :]
    x = low * (high / low) ** grid
    log_pmf = (
        torch.lgamma(x + t) - torch.lgamma(t) - torch.lgamma(x + 1) + t * torch.log1p(-qq) + x * torch.log(qq)
    )
    f = log_pmf.exp() * torch.log1p(cc * x) * x  # the integrand in log x
    step = torch.log(high / low)[:, 0] / (TAIL_POINTS - 1)
    return ((f[:, 1:] + f[:, :-1]) / 2).sum(-1) * step


def expected_log1p_cp10k_exact(
    log_rho: torch.Tensor, log_library: torch.Tensor, theta: torch.Tensor, max_count: int = 20_000
) -> torch.Tensor:
    """The same expectation as an explicit sum over every count up to ``max_count`` (float64; slow).

    The reference :func:`expected_log1p_cp10k` is measured against.
    """
    library = log_library.double().exp()[:, None]
    mu = (log_rho.double().exp() * library).clamp_min(1e-12)
    theta = theta.double().expand_as(mu)
    c = 1e4 / library
    out = torch.empty_like(mu)
    k = torch.arange(max_count + 1, dtype=torch.float64, device=mu.device)
    for i in range(mu.shape[0]):
        m, t = mu[i, :, None], theta[i, :, None]
        log_pmf = (
            torch.lgamma(k + t)
            - torch.lgamma(t)
            - torch.lgamma(k + 1)
            + t * (t.log() - (t + m).log())
            + k * (m.log() - (t + m).log())
        )
        out[i] = (log_pmf.exp() * torch.log1p(c[i] * k)).sum(-1)
    return out.to(log_rho.dtype)
