"""SQL that turns the outcome log into sufficient statistics (never raw rows into Python).

Every query groups twice: by (variant, unit) to get each unit's own numbers, then by variant
(and the day of the unit's first activity, so a cumulative time series comes for free: the
sufficient statistics of disjoint unit cohorts add up). Results are a handful of rows per
variant and day, whatever the size of the log.

Which rows count (the experiment's *current phase*, *enrolled* units only)::

    requests  experiment_id = :e AND phase = :p AND in_experiment AND NOT shadow
    latency   status = 'ok' only: a failed request is often fast, and counting it would make a
              crashing engine look quick; failures are measured by error_rate instead
    errors    error_rate = (error + timeout) / (requests that were not 'rejected');
              'rejected' (e.g. a prompt over the context window) is a product limit, not an
              engine failure, and is reported per variant as its own count
    shadow    dark-launch copies are excluded from every metric and summarised separately

Attribution of events to an experiment (issue 5, item 2). An event of the metric's name counts
for unit U in variant V of experiment E (current phase P) when:

1. *Tied to a request*: the event's ``request_id`` names a non-shadow, enrolled request of E in
   phase P; then it counts for that request's unit and variant, and only when
   ``0 <= event.timestamp - request.started_at <= window``.
2. *Otherwise* (no ``request_id``, or one that names no request of E): it counts for the unit
   when the unit has an exposure row in (E, P) with
   ``0 <= event.timestamp - exposure.first_seen <= window``, under the exposure's variant.
   An event whose ``request_id`` names a request of E in an *older* phase counts nowhere.

``window`` is the metric's ``attribution_window_s`` (inclusive at both ends). An event that
names another experiment (``experiment_key`` set and different) is ignored. Events of units
never exposed are kept in the table but count towards nothing. A unit's value is then 1/0
(``binary``: at least one attributed event), the number of attributed events (``count``) or
the sum of their values (``sum``); every exposed unit counts, with 0 when it has no event.

Quantiles (``latency_p50_ms`` ...) follow the four-step recipe of
:mod:`abtest.stats.quantiles`: PostgreSQL computes ``percentile_cont`` (step 1), the indicator
sums ride along in the request scan (step 2, :func:`request_rows`), and the CI's order
statistics come from ``percentile_disc`` at fractions ``(rank - 0.5) / N``, which select exactly
the 1-based ``rank`` (step 3). SQLite, which has neither, fetches each needed order statistic
with ``ORDER BY latency_ms LIMIT 1 OFFSET rank - 1`` and interpolates with
:func:`abtest.stats.percentile_cont_ranks` (the same definition as PostgreSQL's).

Cost on PostgreSQL: one aggregation of the request log by unit, two sorts of each variant's ok
latencies (steps 1 and 3), one scan for the latency histogram and one for the shadow summary,
plus the event joins. :func:`tune_session` raises ``work_mem`` for the report's transaction so
these sorts and hash aggregates stay in memory, and turns JIT off (its compile time exceeds its
gain on these short aggregate queries).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ..stats import percentile_cont_ranks

__all__ = [
    "Scope",
    "tune_session",
    "exposure_counts",
    "request_rows",
    "event_rows",
    "quantile_points",
    "values_at_ranks",
    "pooled_quantile",
    "latency_histogram",
    "shadow_rows",
]

_SERVED = ("experiment_id = :e AND phase = :p AND in_experiment = :yes AND shadow = :no")


@dataclass(frozen=True)
class Scope:
    """Which slice of the log a report reads: experiment id, phase and the SQL dialect."""

    experiment_id: int
    phase: int
    dialect: str

    @property
    def params(self) -> dict[str, Any]:
        return {"e": self.experiment_id, "p": self.phase, "yes": True, "no": False}

    @property
    def is_pg(self) -> bool:
        return self.dialect == "postgresql"


def _day(scope: Scope, expr: str) -> str:
    """The UTC calendar day of a timestamp expression, as text (YYYY-MM-DD)."""
    if scope.is_pg:
        return f"to_char(({expr}) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
    return f"date({expr})"


def _seconds(scope: Scope, start: str, end: str) -> str:
    """Seconds from ``start`` to ``end`` (SQLite stores UTC text; julianday keeps ~ms precision)."""
    if scope.is_pg:
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def _floor(scope: Scope, expr: str) -> str:
    # PostgreSQL's CAST rounds; SQLite's truncates (the same as floor for values >= 0).
    return f"FLOOR({expr})" if scope.is_pg else f"CAST({expr} AS INTEGER)"


def tune_session(conn: Connection, work_mem: str = "256MB") -> None:
    """PostgreSQL only: transaction-local ``work_mem`` and ``jit`` for the report's queries."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL work_mem = '{work_mem}'"))
        conn.execute(text("SET LOCAL jit = off"))


def exposure_counts(conn: Connection, scope: Scope) -> dict[str, int]:
    """Exposed units per variant (the SRM check's observed counts)."""
    rows = conn.execute(text(
        "SELECT variant, COUNT(*) FROM exposures WHERE experiment_id = :e AND phase = :p "
        "GROUP BY variant"), scope.params)
    return {v: int(n) for v, n in rows}


def request_rows(conn: Connection, scope: Scope, cap: float | None = None,
                 thresholds: dict[str, list[float]] | None = None) -> list[dict[str, Any]]:
    """Per (variant, day of the unit's first request): RatioStats sums for latency and errors.

    ``lat``/``ok`` are the latency numerator and denominator of a unit (ok requests only,
    latency capped at ``cap`` when given); ``err``/``tot`` the error-rate pair; ``n_all`` and
    ``n_rej`` count all and rejected requests. With ``thresholds`` (variant -> x_hat per quantile
    level, step 1 of the quantile recipe) the same scan also returns step 2, the indicator sums
    ``s{j}``, ``s{j}_sq``, ``s{j}_d`` over units with at least one ok request (``ok_units``),
    so the request log is aggregated by unit once, not twice.
    """
    lat = "latency_ms" if cap is None else "CASE WHEN latency_ms > :cap THEN :cap ELSE latency_ms END"
    params: dict[str, Any] = {**scope.params, "cap": cap}
    inner, outer, names = [], [], []
    for j, case in enumerate(_threshold_cases(thresholds or {}, params)):
        inner.append(f"SUM(CASE WHEN status = 'ok' AND latency_ms <= {case} THEN 1 ELSE 0 END) AS s{j}")
        outer.append(f"SUM(s{j}), SUM(s{j} * s{j}), SUM(s{j} * ok)")
        names += [f"s{j}", f"s{j}_sq", f"s{j}_d"]
    sql = f"""
        SELECT variant, day, COUNT(*) AS units,
               SUM(lat), SUM(lat * lat), SUM(ok), SUM(ok * ok), SUM(lat * ok),
               SUM(err), SUM(err * err), SUM(tot), SUM(tot * tot), SUM(err * tot),
               SUM(n_all), SUM(n_rej), SUM(CASE WHEN ok > 0 THEN 1 ELSE 0 END){''.join(', ' + o for o in outer)}
        FROM (SELECT variant, unit_id, {_day(scope, 'MIN(started_at)')} AS day,
                     SUM(CASE WHEN status = 'ok' THEN {lat} ELSE 0 END) AS lat,
                     SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok,
                     SUM(CASE WHEN status IN ('error', 'timeout') THEN 1 ELSE 0 END) AS err,
                     SUM(CASE WHEN status <> 'rejected' THEN 1 ELSE 0 END) AS tot,
                     COUNT(*) AS n_all,
                     SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS n_rej{''.join(', ' + i for i in inner)}
              FROM requests WHERE {_SERVED}
              GROUP BY variant, unit_id) AS u
        GROUP BY variant, day ORDER BY variant, day"""
    names = ["variant", "day", "units", "lat", "lat_sq", "ok", "ok_sq", "lat_ok", "err", "err_sq",
             "tot", "tot_sq", "err_tot", "n_all", "n_rej", "ok_units", *names]
    return _dicts(conn.execute(text(sql), params), names)


def _threshold_cases(thresholds: dict[str, list[float]], params: dict[str, Any]) -> list[str]:
    """One ``CASE variant WHEN ... THEN x_hat END`` per level; binds its values into ``params``."""
    variants = sorted(thresholds)
    if not variants:
        return []
    cases = []
    for j in range(len(thresholds[variants[0]])):
        whens = []
        for i, v in enumerate(variants):
            params[f"tv{i}"], params[f"tx{i}_{j}"] = v, thresholds[v][j]
            whens.append(f"WHEN :tv{i} THEN :tx{i}_{j}")
        cases.append(f"(CASE variant {' '.join(whens)} END)")
    return cases


def event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str,
               kind: str, window_s: int) -> list[dict[str, Any]]:
    """Per (variant, day of first exposure): units, SUM(y), SUM(y*y) of an event metric.

    Implements the attribution rule of the module docstring; ``kind`` is binary|count|sum.
    """
    y = {"binary": "CASE WHEN a.n_ev > 0 THEN 1 ELSE 0 END",
         "count": "COALESCE(a.n_ev, 0)", "sum": "COALESCE(a.v, 0)"}[kind]
    other_exp = "(ev.experiment_key IS NULL OR ev.experiment_key = :key)"
    sql = f"""
        WITH attributed AS (
            SELECT r.unit_id AS unit_id, r.variant AS variant, ev.value AS value
            FROM events ev JOIN requests r ON r.request_id = ev.request_id
            WHERE ev.name = :name AND ev.request_id IS NOT NULL AND {other_exp}
              AND r.experiment_id = :e AND r.phase = :p
              AND r.in_experiment = :yes AND r.shadow = :no
              AND {_seconds(scope, 'r.started_at', 'ev.timestamp')} BETWEEN 0 AND :w
            UNION ALL
            SELECT x.unit_id, x.variant, ev.value
            FROM exposures x JOIN events ev ON ev.unit_id = x.unit_id AND ev.name = :name
            LEFT JOIN requests r2 ON r2.request_id = ev.request_id AND r2.experiment_id = :e
            WHERE x.experiment_id = :e AND x.phase = :p AND {other_exp} AND r2.request_id IS NULL
              AND {_seconds(scope, 'x.first_seen', 'ev.timestamp')} BETWEEN 0 AND :w
        ), per_unit AS (
            SELECT unit_id, variant, COUNT(*) AS n_ev, SUM(value) AS v
            FROM attributed GROUP BY unit_id, variant
        )
        SELECT x.variant, {_day(scope, 'x.first_seen')} AS day, COUNT(*) AS units,
               SUM({y}) AS s, SUM(({y}) * ({y})) AS s2
        FROM exposures x LEFT JOIN per_unit a ON a.unit_id = x.unit_id AND a.variant = x.variant
        WHERE x.experiment_id = :e AND x.phase = :p
        GROUP BY x.variant, {_day(scope, 'x.first_seen')} ORDER BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s}
    return _dicts(conn.execute(text(sql), params), ("variant", "day", "units", "sum", "sum_sq"))


def quantile_points(conn: Connection, scope: Scope,
                    levels: Sequence[float]) -> dict[str, tuple[int, list[float]]]:
    """Step 1 per variant: ``(N ok requests, [percentile_cont(q) for q in levels])``."""
    if scope.is_pg:
        rows = conn.execute(text(
            f"SELECT variant, COUNT(*), percentile_cont(CAST(:levels AS double precision[])) "
            f"WITHIN GROUP (ORDER BY latency_ms) FROM requests WHERE {_SERVED} AND status = 'ok' "
            f"GROUP BY variant"), {**scope.params, "levels": list(levels)})
        return {v: (int(n), [float(x) for x in xs]) for v, n, xs in rows}
    counts = conn.execute(text(
        f"SELECT variant, COUNT(*) FROM requests WHERE {_SERVED} AND status = 'ok' GROUP BY variant"),
        scope.params).all()
    out: dict[str, tuple[int, list[float]]] = {}
    for variant, n in counts:
        plan = [percentile_cont_ranks(int(n), q) for q in levels]
        ranks = [r for lo, hi, _ in plan for r in (lo, hi)]
        values = values_at_ranks(conn, scope, {variant: (int(n), ranks)})[variant]
        out[variant] = (int(n), [values[lo] + w * (values[hi] - values[lo]) for lo, hi, w in plan])
    return out


def values_at_ranks(conn: Connection, scope: Scope,
                    wanted: dict[str, tuple[int, Iterable[int]]]) -> dict[str, dict[int, float]]:
    """Step 3: ok latencies at 1-based ascending ranks, ``{variant: (N, ranks)}`` -> values.

    PostgreSQL: one ``percentile_disc`` query for all variants (one sort per variant) at
    fractions ``(rank - 0.5) / N``; SQLite: one ``LIMIT 1 OFFSET rank - 1`` query per rank.
    """
    plan = {v: (n, sorted(set(ranks))) for v, (n, ranks) in wanted.items() if n > 0}
    if not plan:
        return {}
    if scope.is_pg:
        params: dict[str, Any] = dict(scope.params)
        whens = []
        for i, (v, (n, ranks)) in enumerate(sorted(plan.items())):
            params[f"rv{i}"], params[f"rf{i}"] = v, [(r - 0.5) / n for r in ranks]
            whens.append(f"WHEN :rv{i} THEN CAST(:rf{i} AS double precision[])")
        rows = conn.execute(text(
            f"SELECT variant, percentile_disc(CASE variant {' '.join(whens)} END) WITHIN GROUP "
            f"(ORDER BY latency_ms) FROM requests WHERE {_SERVED} AND status = 'ok' "
            f"AND variant IN ({', '.join(f':rv{i}' for i in range(len(plan)))}) GROUP BY variant"), params)
        return {v: {r: float(x) for r, x in zip(plan[v][1], xs)} for v, xs in rows}
    stmt = text(f"SELECT latency_ms FROM requests WHERE {_SERVED} AND status = 'ok' AND variant = :v "
                f"ORDER BY latency_ms LIMIT 1 OFFSET :k")
    return {v: {r: float(conn.execute(stmt, {**scope.params, "v": v, "k": r - 1}).scalar_one()) for r in ranks}
            for v, (_, ranks) in plan.items()}


def pooled_quantile(conn: Connection, scope: Scope, level: float) -> float | None:
    """``percentile_cont(level)`` of ok latencies over all variants (the capping threshold)."""
    if scope.is_pg:
        value = conn.execute(text(
            f"SELECT percentile_cont(:q) WITHIN GROUP (ORDER BY latency_ms) FROM requests "
            f"WHERE {_SERVED} AND status = 'ok'"), {**scope.params, "q": level}).scalar_one()
        return None if value is None else float(value)
    n = int(conn.execute(text(f"SELECT COUNT(*) FROM requests WHERE {_SERVED} AND status = 'ok'"),
                         scope.params).scalar_one())
    if n == 0:
        return None
    lo, hi, w = percentile_cont_ranks(n, level)
    stmt = text(f"SELECT latency_ms FROM requests WHERE {_SERVED} AND status = 'ok' "
                f"ORDER BY latency_ms LIMIT 1 OFFSET :k")
    x_lo = float(conn.execute(stmt, {**scope.params, "k": lo - 1}).scalar_one())
    x_hi = float(conn.execute(stmt, {**scope.params, "k": hi - 1}).scalar_one())
    return x_lo + w * (x_hi - x_lo)


def latency_histogram(conn: Connection, scope: Scope, upper: float,
                      bins: int = 40) -> dict[str, list[int]]:
    """Counts of ok latencies per variant in ``bins`` equal bins over ``[0, upper)``.

    The last extra bin collects everything at or above ``upper``.
    """
    width = upper / bins
    sql = f"""
        SELECT variant, CASE WHEN latency_ms >= :hi THEN :nb ELSE {_floor(scope, 'latency_ms / :w')} END AS b,
               COUNT(*)
        FROM requests WHERE {_SERVED} AND status = 'ok' GROUP BY 1, 2"""
    out: dict[str, list[int]] = {}
    for variant, b, n in conn.execute(text(sql), {**scope.params, "hi": upper, "nb": bins, "w": width}):
        counts = out.setdefault(variant, [0] * (bins + 1))
        counts[min(max(int(b), 0), bins)] += int(n)
    return out


def shadow_rows(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """Dark-launch copies per variant: requests, mean latency, errors and output agreement."""
    sql = """
        SELECT variant, COUNT(*), AVG(latency_ms),
               SUM(CASE WHEN status IN ('error', 'timeout') THEN 1 ELSE 0 END),
               SUM(CASE WHEN output_match = :yes THEN 1 ELSE 0 END), COUNT(output_match)
        FROM requests WHERE experiment_id = :e AND phase = :p AND shadow = :yes
        GROUP BY variant ORDER BY variant"""
    names = ("variant", "requests", "latency_mean_ms", "errors", "output_matches", "compared")
    return _dicts(conn.execute(text(sql), scope.params), names)


def _dicts(rows: Iterable[Sequence[Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts; numeric aggregates as float (PostgreSQL returns Decimal for SUM(bigint))."""
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for name, value in zip(names, row):
            item[name] = value if name in ("variant", "day") or value is None or isinstance(
                value, str) else float(value)
        out.append(item)
    return out
