"""Independent computations from raw rows (numpy/scipy/statsmodels), without abtest.stats."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
from scipy import stats as sps


def served(requests: Iterable[Mapping[str, Any]], phase: int) -> list[Mapping[str, Any]]:
    return [r for r in requests if r["phase"] == phase and r["in_experiment"] and not r["shadow"]]


def per_unit(requests: Iterable[Mapping[str, Any]], variant: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit numerator and denominator of latency_ms (ok only) or error_rate (non-rejected)."""
    m: dict[str, float] = defaultdict(float)
    d: dict[str, float] = defaultdict(float)
    for r in requests:
        if r["variant"] != variant:
            continue
        u = r["unit_id"]
        m[u] += 0.0
        d[u] += 0.0
        if metric == "latency_ms" and r["status"] == "ok":
            m[u] += r["latency_ms"]
            d[u] += 1
        elif metric == "error_rate" and r["status"] != "rejected":
            m[u] += r["status"] in ("error", "timeout")
            d[u] += 1
    units = sorted(m)
    return np.array([m[u] for u in units]), np.array([d[u] for u in units])


def delta_method(m: np.ndarray, d: np.ndarray) -> tuple[float, float]:
    """Ratio estimate and its standard error (delta method, n-1 (co)variances)."""
    n = m.size
    r = m.sum() / d.sum()
    cov = np.cov(np.vstack([m, d]), ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / d.mean() ** 2
    return float(r), float(np.sqrt(var / n))


def welch_from_se(est_c: float, se_c: float, n_c: int, est_t: float, se_t: float, n_t: int) -> tuple[float, float]:
    """Welch t-test p-value and df from estimates and their standard errors."""
    se = np.hypot(se_c, se_t)
    df = se**4 / (se_t**4 / (n_t - 1) + se_c**4 / (n_c - 1))
    t = (est_t - est_c) / se
    return float(2 * sps.t.sf(abs(t), df)), float(df)


def unit_values(exposures: Iterable[Mapping[str, Any]], values: Mapping[str, float], variant: str,
                phase: int) -> np.ndarray:
    """One value per exposed unit of ``variant`` (0 when the unit has none)."""
    return np.array([values.get(x["unit_id"], 0.0) for x in exposures
                     if x["variant"] == variant and x["phase"] == phase])


def attributed_values(log: Any, phase: int, name: str, window_s: float, kind: str,
                      experiment_key: str = "exp-1") -> dict[tuple[str, str], float]:
    """The attribution rule of abtest.reports.queries, applied in Python to the raw rows."""
    requests = {r["request_id"]: r for r in log.requests}
    exposed = {x["unit_id"]: x for x in log.exposures if x["phase"] == phase}
    count: dict[tuple[str, str], float] = defaultdict(float)
    total: dict[tuple[str, str], float] = defaultdict(float)
    for e in log.events:
        if e["name"] != name or e["experiment_key"] not in (None, experiment_key):
            continue
        r = requests.get(e["request_id"])
        if r is not None:
            ok = r["phase"] == phase and r["in_experiment"] and not r["shadow"]
            start, key = r["started_at"], (r["unit_id"], r["variant"])
        else:
            x = exposed.get(e["unit_id"])
            ok = x is not None
            start, key = (x["first_seen"], (x["unit_id"], x["variant"])) if x else (None, None)
        if ok and 0 <= (e["timestamp"] - start).total_seconds() <= window_s:
            count[key] += 1
            total[key] += e["value"]
    if kind == "binary":
        return {k: 1.0 for k, v in count.items() if v > 0}
    return dict(count) if kind == "count" else dict(total)
