"""Bayesian view: chance to beat control and expected loss.

Gaussian approximation with a flat (improper) prior on the effect, as in
gbstats 0.8's ``EffectBayesianABTest`` with its default ``GaussianPrior(proper
=False)``: the posterior of the effect is ``Normal(estimate, se^2)``, where the
estimate and standard error are the frequentist ones of
:mod:`abtest.stats.frequentist` (relative lift by default, so that losses are
in "fraction of the control mean" and comparable across metrics; absolute on
request).

For a metric where higher is better, with ``delta ~ N(mu, sigma^2)``:

    chance_to_win      = P(delta > 0)            = Phi(mu / sigma)
    loss_treatment     = E[max(0, -delta)]       = sigma phi(mu/sigma) - mu Phi(-mu/sigma)
    loss_control       = E[max(0,  delta)]       = sigma phi(mu/sigma) + mu Phi( mu/sigma)

``loss_treatment`` is the expected shortfall if we ship the treatment and it
is in fact worse (gbstats ``risk[1]``); ``loss_control`` is the expected
shortfall of keeping control (``risk[0]``). For lower-is-better metrics
(latency, error rate) the sign of ``delta`` is flipped first (gbstats'
``inverse=True``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from scipy import stats as sps

from ._common import check_alpha
from .frequentist import Comparison

__all__ = ["BayesianResult", "bayesian_test", "gaussian_chance_and_loss"]

Scale = Literal["relative", "absolute"]


@dataclass(frozen=True)
class BayesianResult:
    """Posterior summary of one treatment-vs-control effect."""

    scale: Scale
    higher_is_better: bool
    mean: float | None
    sd: float | None
    ci_lower: float | None
    ci_upper: float | None
    chance_to_win: float | None
    loss_treatment: float | None
    loss_control: float | None
    error: str | None = None


def gaussian_chance_and_loss(mu: float, sigma: float,
                             higher_is_better: bool = True) -> tuple[float, float, float]:
    """``(chance_to_win, loss_treatment, loss_control)`` for ``delta ~ N(mu, sigma^2)``."""
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma!r}")
    m = mu if higher_is_better else -mu
    z = m / sigma
    pdf = float(sps.norm.pdf(z))
    chance = float(sps.norm.cdf(z))
    loss_t = sigma * pdf - m * float(sps.norm.cdf(-z))
    loss_c = sigma * pdf + m * chance
    return chance, max(loss_t, 0.0), max(loss_c, 0.0)


def bayesian_test(comparison: Comparison, scale: Scale = "relative",
                  higher_is_better: bool = True,
                  alpha: float | None = None) -> BayesianResult:
    """Chance to win and expected losses from a frequentist comparison.

    ``alpha`` (default: the comparison's) sets the width of the reported
    ``(1 - alpha)`` credible interval. Returns an ``error`` result when the
    requested effect is unavailable (e.g. zero baseline for ``"relative"``).
    """
    if scale not in ("relative", "absolute"):
        raise ValueError(f"scale must be 'relative' or 'absolute', got {scale!r}")
    a = comparison.alpha if alpha is None else check_alpha(alpha)
    effect = comparison.relative if scale == "relative" else comparison.absolute
    if effect is None or not effect.se > 0:
        error = comparison.error or (comparison.relative_error if scale == "relative"
                                     else None) or "no effect estimate available"
        return BayesianResult(scale, higher_is_better, None, None, None, None,
                              None, None, None, error)
    mu, sigma = effect.estimate, effect.se
    chance, loss_t, loss_c = gaussian_chance_and_loss(mu, sigma, higher_is_better)
    z = float(sps.norm.ppf(1.0 - a / 2.0))
    return BayesianResult(scale, higher_is_better, mu, sigma, mu - z * sigma,
                          mu + z * sigma, chance, loss_t, loss_c)
