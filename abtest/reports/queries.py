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
:mod:`abtest.stats.quantiles`: PostgreSQL computes ``percentile_cont`` and fetches the CI's
order statistics with ``percentile_disc`` at fractions ``(rank - 0.5) / N`` (which select
exactly the 1-based ``rank``); SQLite, which has neither, fetches each needed order statistic
with ``ORDER BY latency_ms LIMIT 1 OFFSET rank - 1`` and interpolates with
:func:`abtest.stats.percentile_cont_ranks` (the same definition as PostgreSQL's).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, text

from ..stats import percentile_cont_ranks

__all__ = [
    "Scope",
    "exposure_counts",
    "request_rows",
    "event_rows",
    "quantile_points",
    "indicator_rows",
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


def exposure_counts(conn: Connection, scope: Scope) -> dict[str, int]:
    """Exposed units per variant (the SRM check's observed counts)."""
    rows = conn.execute(text(
        "SELECT variant, COUNT(*) FROM exposures WHERE experiment_id = :e AND phase = :p "
        "GROUP BY variant"), scope.params)
    return {v: int(n) for v, n in rows}


def request_rows(conn: Connection, scope: Scope, cap: float | None = None) -> list[dict[str, Any]]:
    """Per (variant, day of the unit's first request): RatioStats sums for latency and errors.

    ``lat``/``ok`` are the latency numerator and denominator of a unit (ok requests only,
    latency capped at ``cap`` when given); ``err``/``tot`` the error-rate pair; ``n_all`` and
    ``n_rej`` count all and rejected requests.
    """
    lat = "latency_ms" if cap is None else "CASE WHEN latency_ms > :cap THEN :cap ELSE latency_ms END"
    sql = f"""
        SELECT variant, day, COUNT(*) AS units,
               SUM(lat), SUM(lat * lat), SUM(ok), SUM(ok * ok), SUM(lat * ok),
               SUM(err), SUM(err * err), SUM(tot), SUM(tot * tot), SUM(err * tot),
               SUM(n_all), SUM(n_rej)
        FROM (SELECT variant, unit_id, {_day(scope, 'MIN(started_at)')} AS day,
                     SUM(CASE WHEN status = 'ok' THEN {lat} ELSE 0 END) AS lat,
                     SUM(CASE WHEN status = 'ok' THEN 1 ELSE 0 END) AS ok,
                     SUM(CASE WHEN status IN ('error', 'timeout') THEN 1 ELSE 0 END) AS err,
                     SUM(CASE WHEN status <> 'rejected' THEN 1 ELSE 0 END) AS tot,
                     COUNT(*) AS n_all,
                     SUM(CASE WHEN status = 'rejected' THEN 1 ELSE 0 END) AS n_rej
              FROM requests WHERE {_SERVED}
              GROUP BY variant, unit_id) AS u
        GROUP BY variant, day ORDER BY variant, day"""
    names = ("variant", "day", "units", "lat", "lat_sq", "ok", "ok_sq", "lat_ok", "err", "err_sq",
             "tot", "tot_sq", "err_tot", "n_all", "n_rej")
    return _dicts(conn.execute(text(sql), {**scope.params, "cap": cap}), names)


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
            WHERE ev.name = :name AND {other_exp} AND r.experiment_id = :e AND r.phase = :p
              AND r.in_experiment = :yes AND r.shadow = :no
              AND {_seconds(scope, 'r.started_at', 'ev.timestamp')} BETWEEN 0 AND :w
            UNION ALL
            SELECT x.unit_id, x.variant, ev.value
            FROM exposures x JOIN events ev ON ev.unit_id = x.unit_id AND ev.name = :name
            WHERE x.experiment_id = :e AND x.phase = :p AND {other_exp}
              AND {_seconds(scope, 'x.first_seen', 'ev.timestamp')} BETWEEN 0 AND :w
              AND (ev.request_id IS NULL OR NOT EXISTS (
                   SELECT 1 FROM requests r2
                   WHERE r2.request_id = ev.request_id AND r2.experiment_id = :e))
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
        values = values_at_ranks(conn, scope, variant, int(n), [r for lo, hi, _ in plan for r in (lo, hi)])
        out[variant] = (int(n), [values[lo] + w * (values[hi] - values[lo]) for lo, hi, w in plan])
    return out


def values_at_ranks(conn: Connection, scope: Scope, variant: str, n: int,
                    ranks: Iterable[int]) -> dict[int, float]:
    """Latencies (ok requests of ``variant``) at 1-based ascending ``ranks``."""
    wanted = sorted(set(ranks))
    params = {**scope.params, "v": variant}
    if scope.is_pg:
        fractions = [(r - 0.5) / n for r in wanted]
        row = conn.execute(text(
            f"SELECT percentile_disc(CAST(:f AS double precision[])) WITHIN GROUP (ORDER BY latency_ms) "
            f"FROM requests WHERE {_SERVED} AND status = 'ok' AND variant = :v"),
            {**params, "f": fractions}).scalar_one()
        return {r: float(x) for r, x in zip(wanted, row)}
    stmt = text(f"SELECT latency_ms FROM requests WHERE {_SERVED} AND status = 'ok' AND variant = :v "
                f"ORDER BY latency_ms LIMIT 1 OFFSET :k")
    return {r: float(conn.execute(stmt, {**params, "k": r - 1}).scalar_one()) for r in wanted}


def indicator_rows(conn: Connection, scope: Scope,
                   thresholds: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """Step 2: per variant the RatioStats sums of ``s_i = #(latency <= x_hat)`` per level.

    ``thresholds`` maps variant -> x_hat per level. Returns, per variant, ``units``,
    ``d``/``d_sq`` and per level ``s``/``s_sq``/``s_d`` lists.
    """
    variants = sorted(thresholds)
    if not variants:
        return {}
    k = len(next(iter(thresholds.values())))
    params: dict[str, Any] = {**scope.params}
    cols = []
    for j in range(k):
        whens = []
        for i, v in enumerate(variants):
            params[f"v{i}"], params[f"x{i}_{j}"] = v, thresholds[v][j]
            whens.append(f"WHEN :v{i} THEN :x{i}_{j}")
        cols.append(f"SUM(CASE WHEN latency_ms <= (CASE variant {' '.join(whens)} END) "
                    f"THEN 1 ELSE 0 END) AS s{j}")
    outer = ", ".join(f"SUM(s{j}), SUM(s{j} * s{j}), SUM(s{j} * d)" for j in range(k))
    sql = f"""
        SELECT variant, COUNT(*), SUM(d), SUM(d * d), {outer}
        FROM (SELECT variant, unit_id, COUNT(*) AS d, {', '.join(cols)}
              FROM requests WHERE {_SERVED} AND status = 'ok' GROUP BY variant, unit_id) AS u
        GROUP BY variant"""
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(text(sql), params):
        vals = [float(x or 0) for x in row[1:]]
        out[row[0]] = {"units": int(vals[0]), "d": vals[1], "d_sq": vals[2],
                       "s": vals[3::3], "s_sq": vals[4::3], "s_d": vals[5::3]}
    return out


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
