"""SQL that turns the outcome log and its rollups into sufficient statistics (never raw rows
into Python).

Request metrics read the rollups of :mod:`abtest.reports.rollups`, maintained as requests are
logged, so a report's cost grows with units and sketch buckets, not with requests:

* ratio metrics (``latency_ms``, ``error_rate``, ``ttft_ms``, ``cost_per_request``, ... see
  :mod:`abtest.reports.catalogue`) from ``unit_outcomes``: one row per unit, grouped by
  variant and the day of the unit's first request (a cumulative time series comes for free:
  the sufficient statistics of disjoint unit cohorts add up);
* quantiles (of latency and of time to first token, one code path) from the per-variant
  :class:`~abtest.stats.LatencySketch` in ``latency_buckets`` / ``ttft_buckets`` (0.1 %
  relative accuracy): the point estimate (step 1 of :mod:`abtest.stats.quantiles`) and
  the CI's order statistics (step 3). Step 2, each unit's count of requests at or below the
  estimate, needs per-request values: up to ``ReportOptions.exact_quantile_rows`` ok
  requests it is computed exactly from the request log (:func:`indicator_rows`), above that
  from ``latency_samples``, all requests of a fixed 1-in-32 hash sample of units, whose
  per-unit variance is scaled to the full unit count (:meth:`abtest.stats.RatioStats.scaled_to`);
* ``cost_per_event`` metrics from ``unit_outcomes`` (the unit's cost) joined with the
  attributed events below (:func:`cost_event_rows`);
* the shadow summary from ``shadow_outcomes``.

Capping (``cap``) is the one request metric that scans the log (:func:`request_rows`): its
threshold is chosen when the report is built.

Which rows count (the experiment's *current phase*, *enrolled* units only)::

    requests  experiment_id = :e AND phase = :p AND in_experiment AND NOT shadow
    latency   status = 'ok' only: a failed request is often fast, and counting it would make a
              crashing engine look quick; failures are measured by error_rate instead
    LLM/cost  status = 'ok' only, and only requests whose column is recorded (not NULL: rows
              logged before a column existed, or from an engine that does not report it)
    errors    error_rate = errors / requests in its denominator, the rules of
              :mod:`abtest.reports.statuses` (error and timeout count as errors; rejected and
              unavailable are excluded from the denominator and reported per variant)
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

Cost on PostgreSQL: one scan of ``unit_outcomes`` and of the sketch buckets, the exposure and
event joins, and step 2 (a scan of the sample, or of the log below the exact limit).
:func:`tune_session` raises ``work_mem`` for the report's transaction so the sorts and hash
aggregates stay in memory, and turns JIT off (its compile time exceeds its gain here).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Connection, select, text
from sqlalchemy.orm import Session, selectinload

from ..errors import NotFound
from ..models import AuditEntry, Experiment
from ..stats import LatencySketch
from . import statuses as ST
from .catalogue import RATIO_SOURCES
from .rollups import OK_SUMS

__all__ = [
    "Scope",
    "experiment",
    "last_audit_entry",
    "tune_session",
    "exposure_days",
    "fresh_exposure_counts",
    "unit_rows",
    "request_rows",
    "indicator_rows",
    "event_rows",
    "cost_event_rows",
    "variant_engines",
    "sketches",
    "shadow_rows",
]

_SERVED = ("experiment_id = :e AND phase = :p AND in_experiment = :yes AND shadow = :no")
_OK = f"status = '{ST.OK}'"


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


def experiment(session: Session, key: str) -> Experiment:
    """The experiment with its variants and metrics; NotFound for an unknown key."""
    exp = session.scalar(select(Experiment).where(Experiment.key == key).options(
        selectinload(Experiment.variants), selectinload(Experiment.metrics)))
    if exp is None:
        raise NotFound(f"no experiment with key {key!r}", details={"experiment": key})
    return exp


def last_audit_entry(session: Session, experiment_id: int, action: str) -> AuditEntry | None:
    """The latest audit entry of ``action`` (the report shows the last guardrail breach)."""
    return session.scalar(select(AuditEntry).where(
        AuditEntry.experiment_id == experiment_id, AuditEntry.action == action)
        .order_by(AuditEntry.id.desc()).limit(1))


def _day(scope: Scope, expr: str) -> str:
    """The UTC calendar day of a timestamp expression (a date; :func:`_dicts` makes it text)."""
    if scope.is_pg:
        return f"CAST(({expr}) AT TIME ZONE 'UTC' AS date)"
    return f"date({expr})"


def _float(expr: str) -> str:
    """Sums of double precision are much cheaper than PostgreSQL's numeric sums of integers."""
    return f"CAST({expr} AS double precision)"


def _seconds(scope: Scope, start: str, end: str) -> str:
    """Seconds from ``start`` to ``end`` (SQLite stores UTC text; julianday keeps ~ms precision)."""
    if scope.is_pg:
        return f"EXTRACT(EPOCH FROM ({end} - {start}))"
    return f"((julianday({end}) - julianday({start})) * 86400.0)"


def tune_session(conn: Connection, work_mem: str = "256MB") -> None:
    """PostgreSQL only: transaction-local ``work_mem`` and ``jit`` for the report's queries."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SET LOCAL work_mem = '{work_mem}'"))
        conn.execute(text("SET LOCAL jit = off"))


def exposure_days(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """Exposed units per (variant, day of first exposure): the SRM check's counts (summed over
    days) and the unit counts of the event metrics (a unit without events has value 0)."""
    sql = f"""
        SELECT variant, {_day(scope, 'first_seen')} AS day, COUNT(*) FROM exposures
        WHERE experiment_id = :e AND phase = :p GROUP BY 1, 2 ORDER BY 1, 2"""
    return _dicts(conn.execute(text(sql), scope.params), ("variant", "day", "units"))


def fresh_exposure_counts(conn: Connection, scope: Scope) -> dict[str, int]:
    """Sticky experiments: exposed units per variant that were *assigned* in this phase (their
    sticky row's phase), the only ones expected to follow this phase's weights; units kept
    from an earlier phase follow the weights of theirs (see :mod:`abtest.stats.allocation`)."""
    sql = """
        SELECT x.variant, COUNT(*) FROM exposures x
        JOIN sticky_assignments s ON s.experiment_id = x.experiment_id AND s.unit_id = x.unit_id
        WHERE x.experiment_id = :e AND x.phase = :p AND s.phase = :p GROUP BY 1"""
    return {str(v): int(n) for v, n in conn.execute(text(sql), scope.params)}


_PAIRS = tuple(RATIO_SOURCES.values())
_EXTRAS = ("n_all", "n_rej", "n_unav", "dec_n", "unpriced")
_UNIT_SUMS = ",\n               ".join(
    [f"SUM({m}), SUM({m} * {m}), SUM({d}), SUM({d} * {d}), SUM({m} * {d})" for m, d in _PAIRS]
    + [f"SUM({x})" for x in _EXTRAS]
    + [f"SUM(CASE WHEN {d} > 0 THEN 1 ELSE 0 END)" for d in ("ok", "ttft_n")])
_UNIT_NAMES = ("variant", "day", "units", *(n for m, d in _PAIRS for n in (m, f"{m}_sq", d, f"{d}_sq", f"{m}_{d}")),
               *_EXTRAS, "ok_units", "ttft_units")
# Per unit, from a row of unit_outcomes' shape: the RATIO_SOURCES pairs and the extras.
_PER_UNIT = {
    "lat": "latency_sum", "ok": _float("ok"), "err": _float("errors"),
    "tot": _float(" - ".join(("requests", *ST.EXCLUDED))), "ttft": _float("ttft_sum"), "ttft_n": _float("ttft_n"),
    "tokens": _float("tokens_sum"), "tokens_n": _float("tokens_n"), "dec_tokens": _float("decode_tokens"),
    "dec_s": _float("decode_ms_sum") + " / 1000.0", "trunc": _float("truncated"), "finish_n": _float("finish_n"),
    "compute": _float("compute_sum"), "compute_n": _float("compute_n"), "cost": _float("cost_sum"),
    "cost_n": _float("cost_n"), "n_all": _float("requests"), "n_rej": _float("rejected"),
    "n_unav": _float("unavailable"), "dec_n": _float("decode_n"), "unpriced": _float("unpriced"),
}


def _unit_stats(scope: Scope, units: str) -> str:
    """Per (variant, day): the sums of :data:`_UNIT_NAMES` over ``units`` (rows of the
    ``unit_outcomes`` shape: the rollup itself or the same columns computed from the log)."""
    per_unit = ", ".join(f"{expr} AS {name}" for name, expr in _PER_UNIT.items())
    return f"""
        SELECT variant, day, COUNT(*) AS units, {_UNIT_SUMS}
        FROM (SELECT variant, {_day(scope, 'first_at')} AS day, {per_unit} FROM {units}) AS u
        GROUP BY variant, day ORDER BY variant, day"""


def unit_rows(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """Per (variant, day of the unit's first request): RatioStats sums of every built-in ratio
    metric, from the ``unit_outcomes`` rollup (one row per unit, not per request).

    For each ``(m, d)`` of :data:`~abtest.reports.catalogue.RATIO_SOURCES` (e.g. ``lat``/``ok``,
    the latency numerator and denominator of a unit, ok requests only; ``err``/``tot`` the
    error-rate pair): ``m``, ``m_sq``, ``d``, ``d_sq``, ``m_d``. ``n_all``, ``n_rej`` and
    ``n_unav`` count all, rejected and unavailable requests, ``dec_n`` the ok requests with a
    decode time, ``unpriced`` ok requests with an engine time but no cost (no price);
    ``ok_units``/``ttft_units`` the units with at least one ok request / recorded TTFT.
    """
    source = "unit_outcomes WHERE experiment_id = :e AND phase = :p"
    return _dicts(conn.execute(text(_unit_stats(scope, source)), scope.params), _UNIT_NAMES)


def request_rows(conn: Connection, scope: Scope, cap: float) -> list[dict[str, Any]]:
    """:func:`unit_rows` with each ok latency capped at ``cap``, computed from the request log
    (a cap is chosen when the report is built, so no rollup can hold it: one scan of the log)."""
    lat = "CASE WHEN latency_ms > :cap THEN :cap ELSE latency_ms END"
    sums = "".join(f", SUM(CASE WHEN {_OK} AND {cond} THEN {value} ELSE 0 END) AS {name}"
                   for name, (cond, value) in OK_SUMS.items())
    units = f"""(SELECT variant, unit_id, MIN(started_at) AS first_at, COUNT(*) AS requests,
                        {ST.sql_count_if(_OK)} AS ok, {ST.sql_count_if(ST.sql_error())} AS errors,
                        {ST.sql_count_if(f"status = '{ST.REJECTED}'")} AS rejected,
                        {ST.sql_count_if(f"status = '{ST.UNAVAILABLE}'")} AS unavailable,
                        SUM(CASE WHEN {_OK} THEN {lat} ELSE 0 END) AS latency_sum{sums}
                 FROM requests WHERE {_SERVED} GROUP BY variant, unit_id) AS log_units"""
    return _dicts(conn.execute(text(_unit_stats(scope, units)), {**scope.params, "cap": cap}), _UNIT_NAMES)


def indicator_rows(conn: Connection, scope: Scope, thresholds: dict[str, list[float]],
                   sampled: bool, column: str = "latency_ms") -> dict[str, dict[str, Any]]:
    """Quantile step 2 per variant: over units with ok requests whose ``column`` (a quantile
    source: ``latency_ms`` or ``ttft_ms``) is recorded, ``units``, ``d`` (those requests),
    ``d_sq`` and per level ``j`` the sums of ``s_j`` (requests at or below the variant's
    ``x_hat``), ``s_j**2`` and ``s_j * d``.

    ``sampled``: from ``latency_samples`` (the 1-in-32 hash sample of units) instead of the
    request log.
    """
    if column not in ("latency_ms", "ttft_ms"):
        raise ValueError(f"no quantile source column {column!r}")
    params: dict[str, Any] = dict(scope.params)
    inner, outer = [], []
    cases = _threshold_cases(thresholds, params)
    for j, case in enumerate(cases):
        inner.append(f"SUM(CASE WHEN {column} <= {case} THEN 1 ELSE 0 END) AS s{j}")
        outer.append(f"SUM(s{j}), SUM(s{j} * s{j}), SUM(s{j} * d)")
    source = ("latency_samples WHERE experiment_id = :e AND phase = :p" if sampled
              else f"requests WHERE {_SERVED} AND {_OK}") + f" AND {column} IS NOT NULL"
    sql = f"""
        SELECT variant, COUNT(*), SUM(d), SUM(d * d){''.join(', ' + o for o in outer)}
        FROM (SELECT variant, unit_id, COUNT(*) AS d{''.join(', ' + i for i in inner)}
              FROM {source} GROUP BY variant, unit_id) AS u
        GROUP BY variant"""
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(text(sql), params):
        sums = [float(x) for x in row[4:]]
        out[row[0]] = {"units": int(row[1]), "d": float(row[2]), "d_sq": float(row[3]),
                       "s": sums[0::3], "s_sq": sums[1::3], "s_d": sums[2::3]}
    return out


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


_KINDS = {"binary": "CASE WHEN a.n_ev > 0 THEN 1 ELSE 0 END", "count": "COALESCE(a.n_ev, 0)",
          "sum": "COALESCE(a.v, 0)"}


def event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str, window_s: int,
               exposed: Sequence[Mapping[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per kind (binary|count|sum), per (variant, day of first exposure): units, SUM(y),
    SUM(y*y) of the unit values ``y`` of an event metric.

    Implements the attribution rule of the module docstring, once for every metric that counts
    the same event over the same window. The SQL sums only units with attributed events; the
    unit counts come from ``exposed`` (:func:`exposure_days`), every other unit adding 0.
    """
    sums = "".join(f", SUM({y}), SUM(({y}) * ({y}))" for y in _KINDS.values())
    sql = f"""
        WITH {_attributed(scope)}
        SELECT x.variant, {_day(scope, 'x.first_seen')} AS day{sums}
        FROM per_unit a JOIN exposures x ON x.experiment_id = :e AND x.phase = :p
                                        AND x.unit_id = a.unit_id AND x.variant = a.variant
        GROUP BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s}
    names = ("variant", "day", *(f"{k}{suffix}" for k in _KINDS for suffix in ("", "_sq")))
    sums_by_day = {(r["variant"], r["day"]): r for r in _dicts(conn.execute(text(sql), params), names)}
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KINDS}
    for cell in exposed:
        found = sums_by_day.get((cell["variant"], cell["day"]), {})
        for kind, rows in out.items():
            rows.append({"variant": cell["variant"], "day": cell["day"], "units": cell["units"],
                         "sum": found.get(kind, 0.0), "sum_sq": found.get(f"{kind}_sq", 0.0)})
    return out


def _attributed(scope: Scope) -> str:
    """The CTEs ``attributed`` (the module docstring's attribution rule: one row per attributed
    event, with its unit, variant and value) and ``per_unit`` (their count ``n_ev`` and sum ``v``
    per unit and variant). Parameters: the scope's, ``key``, ``name`` and ``w``."""
    other_exp = "(ev.experiment_key IS NULL OR ev.experiment_key = :key)"
    return f"""attributed AS (
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
        )"""


def cost_event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str,
                    window_s: int) -> list[dict[str, Any]]:
    """A ``cost_per_event`` metric's RatioStats sums per (variant, day of first exposure):
    ``units`` and the sums of ``m`` (the unit's cost: its ok requests with a recorded cost,
    0 when it has none, e.g. no request), ``d`` (its attributed events, the rule of the
    module docstring, 0 when none), ``m_sq``, ``d_sq``, ``m_d``. Every exposed unit counts."""
    sql = f"""
        WITH {_attributed(scope)}
        SELECT x.variant, {_day(scope, 'x.first_seen')} AS day, COUNT(*),
               SUM(m), SUM(m * m), SUM(d), SUM(d * d), SUM(m * d)
        FROM (SELECT x.variant, x.first_seen, COALESCE(u.cost_sum, 0) AS m,
                     {_float('COALESCE(a.n_ev, 0)')} AS d
              FROM exposures x
              LEFT JOIN unit_outcomes u ON u.experiment_id = x.experiment_id AND u.phase = x.phase
                                       AND u.unit_id = x.unit_id AND u.variant = x.variant
              LEFT JOIN per_unit a ON a.unit_id = x.unit_id AND a.variant = x.variant
              WHERE x.experiment_id = :e AND x.phase = :p) AS x
        GROUP BY 1, 2 ORDER BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s}
    return _dicts(conn.execute(text(sql), params), ("variant", "day", "units", "m", "m_sq", "d", "d_sq", "m_d"))


def variant_engines(conn: Connection, scope: Scope) -> dict[str, str]:
    """Variant key -> its engine (what a report names when an engine has no price)."""
    rows = conn.execute(text("SELECT key, engine FROM variants WHERE experiment_id = :e"), scope.params)
    return {key: engine for key, engine in rows}


def sketches(conn: Connection, scope: Scope, table: str = "latency_buckets") -> dict[str, LatencySketch]:
    """The sketch of each variant's ok requests, from ``latency_buckets`` (latency) or
    ``ttft_buckets`` (time to first token)."""
    if table not in ("latency_buckets", "ttft_buckets"):
        raise ValueError(f"no sketch table {table!r}")
    rows = conn.execute(text(
        f"SELECT variant, bucket, count FROM {table} WHERE experiment_id = :e AND phase = :p "
        "ORDER BY variant, bucket"), scope.params)
    pairs: dict[str, list[tuple[int, int]]] = {}
    for variant, bucket, count in rows:
        pairs.setdefault(variant, []).append((int(bucket), int(count)))
    return {v: LatencySketch.from_counts(p) for v, p in pairs.items()}


def shadow_rows(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """Dark-launch copies per variant: requests, mean latency, errors and output agreement."""
    sql = """
        SELECT variant, requests, latency_sum / requests, errors, output_matches, compared
        FROM shadow_outcomes WHERE experiment_id = :e AND phase = :p AND requests > 0
        ORDER BY variant"""
    names = ("variant", "requests", "latency_mean_ms", "errors", "output_matches", "compared")
    return _dicts(conn.execute(text(sql), scope.params), names)


def _dicts(rows: Iterable[Sequence[Any]], names: Sequence[str]) -> list[dict[str, Any]]:
    """Rows as dicts; numeric aggregates as float (PostgreSQL returns Decimal for SUM(bigint)),
    days as ISO text."""
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for name, value in zip(names, row):
            if name == "day" and isinstance(value, date):
                value = value.isoformat()
            item[name] = value if name in ("variant", "day") or value is None or isinstance(
                value, str) else float(value)
        out.append(item)
    return out

