"""The report's quality section: how closely engines track each other on live prompts.

Read from ``quality_scores`` (written by :mod:`abtest.services.quality`). Per comparison,
variant and engine pair, the ok rows are summed per unit, then across units, into
:class:`~abtest.stats.RatioStats` (delta method across units):

* method ``logprobs``: ``agreement`` = sum of agreeing tokens / sum of scored tokens,
  ``kl`` = sum of KL(generator || scorer) / sum of scored tokens (a unit whose completions had
  no token is left out);
* method ``text``: ``agreement`` = mean text similarity per request, ``kl`` None.

``skipped`` counts failed scoring jobs (an engine refused, failed or timed out); ``dropped``
counts jobs never run because the scoring queue was full (or the service shut down first).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import text

from .. import stats as S
from .model import Estimate, QualityResult, QualitySection, clean

__all__ = ["quality_section", "NOTE"]

ALPHA = 0.05
NOTE = ("agreement: share of the completion's tokens that are the scorer's greedy choice, scored "
        "teacher-forced (method text: similarity of the scorer's own greedy completion); kl: mean "
        "KL(generator || scorer) per token; per-unit ratio means with 95% CIs; skipped: scoring jobs "
        "that failed; dropped: jobs not run because the scoring queue was full")

_PER_UNIT = """
    SELECT comparison, variant, generator, scorer, method, unit_id,
           COUNT(*) AS n, SUM(COALESCE(tokens, 0)) AS tok, SUM(COALESCE(agree, 0)) AS agr,
           SUM(COALESCE(kl_sum, 0)) AS kl, SUM(COALESCE(similarity, 0)) AS sim
    FROM quality_scores
    WHERE experiment_id = :e AND phase = :p AND status = 'ok'
    GROUP BY comparison, variant, generator, scorer, method, unit_id"""

_ACROSS_UNITS = f"""
    SELECT comparison, variant, generator, scorer, method, COUNT(*), SUM(n),
           SUM(agr), SUM(agr * agr), SUM(tok), SUM(tok * tok), SUM(agr * tok),
           SUM(kl), SUM(kl * kl), SUM(kl * tok),
           SUM(sim), SUM(sim * sim), SUM(n * n), SUM(sim * n)
    FROM ({_PER_UNIT}) AS u
    WHERE method = 'text' OR tok > 0
    GROUP BY comparison, variant, generator, scorer, method
    ORDER BY comparison, variant, generator, scorer, method"""

_COUNTS = """
    SELECT status, COUNT(*) FROM quality_scores
    WHERE experiment_id = :e AND phase = :p AND status <> 'ok' GROUP BY status"""


def quality_section(conn: Any, scope: Any, exp: Any) -> QualitySection | None:
    """None when the experiment has neither a ``quality_sample`` nor scoring rows (shadow copies
    are scored without one)."""
    params = {"e": scope.experiment_id, "p": scope.phase}
    rows = conn.execute(text(_ACROSS_UNITS), params).all()
    counts = {status: int(n) for status, n in conn.execute(text(_COUNTS), params).all()}
    sample = getattr(exp, "quality_sample", None)
    if not rows and not counts and sample is None:
        return None
    results = tuple(_result(r) for r in rows)
    return QualitySection(sample=sample, results=results, skipped=counts.get("failed", 0),
                          dropped=counts.get("dropped", 0), note=NOTE)


def _result(r: Any) -> QualityResult:
    comparison, variant, generator, scorer, method = r[:5]
    units, scored = int(r[5]), int(r[6])
    v = [float(x or 0.0) for x in r[7:]]
    if method == "text":
        agreement = _estimate(S.RatioStats(units, v[8], v[9], float(scored), v[10], v[11]))
        kl = None
    else:
        agr_sum, agr_sq, tok_sum, tok_sq, agr_tok, kl_sum, kl_sq, kl_tok = v[:8]
        agreement = _estimate(S.RatioStats(units, agr_sum, agr_sq, tok_sum, tok_sq, agr_tok))
        kl = _estimate(S.RatioStats(units, kl_sum, kl_sq, tok_sum, tok_sq, kl_tok))
    return QualityResult(comparison=comparison, variant=variant, generator=generator, scorer=scorer,
                         method=method, scored=scored, units=units, agreement=agreement, kl=kl)


def _estimate(stats: S.RatioStats) -> Estimate:
    est = S.variant_estimate(stats, ALPHA)
    return Estimate(est.n, clean(est.mean), clean(est.ci_lower), clean(est.ci_upper), clean(est.se), est.error)
