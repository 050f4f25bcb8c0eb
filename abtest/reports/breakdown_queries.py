"""Queries of the report's deeper views: CUPED covariates and segment breakdowns.

Both read one row per exposed unit: the covariate queries join each unit's exposure to its
events (event metrics) or its requests (built-in ratio metrics) in the lookback window before
its first exposure; the segment queries group the
``unit_outcomes`` rollup (or the attributed events) by the unit's level of a dimension, kept on
its ``exposures`` row (``exposures.segments``) when it was first exposed.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from . import statuses as ST
from .catalogue import RATIO_SOURCES
from .queries import _KINDS, _OK, _PER_UNIT, _UNIT_NAMES, _UNIT_SUMS, Scope, _attributed, _dicts, _seconds
from .rollups import OK_SUMS

__all__ = ["covariate_rows", "builtin_covariate_rows", "BUILTIN_COVARIATE_SUMS", "segment_exposures",
           "segment_unit_rows", "segment_event_rows"]

# Per ratio source, the sums :func:`builtin_covariate_rows` returns (``m``/``d`` post, ``a``/``b``
# pre, ``h`` 1 for a unit with history): all units' post sums, then those of the units with history.
BUILTIN_COVARIATE_SUMS = ("m", "m_sq", "d", "d_sq", "m_d", "h", "h_m", "h_m_sq", "h_d", "h_d_sq", "h_m_d",
                          "a", "a_sq", "b", "b_sq", "a_b", "m_a", "m_b", "d_a", "d_b")


def covariate_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str, window_s: int,
                   lookback_s: int) -> list[dict[str, Any]]:
    """CUPED sums of an event metric per (variant, history), history 1 when the unit has any event
    in the ``lookback_s`` seconds before its first exposure: per kind (binary|count|sum) of the
    post value ``y`` (the attribution rule) and of the covariate ``x`` (the same kind over this
    event in the lookback window): ``units``, ``y``, ``y_sq``, ``x``, ``x_sq``, ``x_y``. One row
    per exposed unit is read; units without history are imputed by the caller."""
    # a range on ev.timestamp itself, so that PostgreSQL reads each unit's events from the index
    window = ("ev.timestamp < x.first_seen AND ev.timestamp >= x.first_seen - :lb * INTERVAL '1 second'"
              if scope.is_pg else
              f"{_seconds(scope, 'ev.timestamp', 'x.first_seen')} > 0 AND "
              f"{_seconds(scope, 'ev.timestamp', 'x.first_seen')} <= :lb")
    post_kinds = {"binary": "CASE WHEN u.n_ev > 0 THEN 1 ELSE 0 END", "count": "u.n_ev", "sum": "u.v"}
    pre_kinds = {"binary": "CASE WHEN u.n_pre > 0 THEN 1 ELSE 0 END", "count": "u.n_pre", "sum": "u.v_pre"}
    sums = "".join(
        f", SUM({y}), SUM(({y}) * ({y})), SUM({x}), SUM(({x}) * ({x})), SUM(({x}) * ({y}))"
        for y, x in ((post_kinds[k], pre_kinds[k]) for k in _KINDS))
    # Per unit by UNION ALL and GROUP BY rather than outer joins: the plan stays a sort or hash
    # whatever the planner believes about the row counts (a nested loop over two large per-unit
    # sets would be quadratic).
    sql = f"""
        WITH {_attributed(scope)}, pre AS (
            SELECT x.unit_id AS unit_id, x.variant AS variant,
                   SUM(CASE WHEN ev.name = :name THEN 1 ELSE 0 END) AS n_ev,
                   SUM(CASE WHEN ev.name = :name THEN ev.value ELSE 0 END) AS v
            FROM exposures x JOIN events ev ON ev.unit_id = x.unit_id
            WHERE x.experiment_id = :e AND x.phase = :p AND {window}
            GROUP BY x.unit_id, x.variant
        ), parts AS (
            SELECT unit_id, variant, 1 AS exposed, 0 AS history, 0 AS n_ev, 0.0 AS v, 0 AS n_pre, 0.0 AS v_pre
            FROM exposures WHERE experiment_id = :e AND phase = :p
            UNION ALL SELECT unit_id, variant, 0, 0, n_ev, v, 0, 0.0 FROM per_unit
            UNION ALL SELECT unit_id, variant, 0, 1, 0, 0.0, n_ev, v FROM pre
        ), u AS (
            SELECT variant, MAX(history) AS history, SUM(n_ev) AS n_ev, SUM(v) AS v,
                   SUM(n_pre) AS n_pre, SUM(v_pre) AS v_pre
            FROM parts GROUP BY unit_id, variant HAVING MAX(exposed) = 1
        )
        SELECT u.variant, u.history, COUNT(*){sums}
        FROM u GROUP BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s, "lb": lookback_s}
    names = ("variant", "history", "units",
             *(f"{k}_{s}" for k in _KINDS for s in ("y", "y_sq", "x", "x_sq", "x_y")))
    return _dicts(conn.execute(text(sql), params), names)


def _window(scope: Scope, at: str) -> str:
    """``at`` in the ``:lb`` seconds before the unit's first exposure ``x.first_seen``."""
    if scope.is_pg:  # a range on the column itself, so that PostgreSQL can use an index on it
        return f"{at} < x.first_seen AND {at} >= x.first_seen - :lb * INTERVAL '1 second'"
    return f"{_seconds(scope, at, 'x.first_seen')} > 0 AND {_seconds(scope, at, 'x.first_seen')} <= :lb"


def builtin_covariate_rows(conn: Connection, scope: Scope, lookback_s: int) -> list[dict[str, Any]]:
    """CUPED sums of every built-in ratio metric per variant, one row per variant.

    Post, per unit of the ``unit_outcomes`` rollup (the units the report's ratio metrics count):
    the numerator ``m`` and denominator ``d`` of each :data:`~abtest.reports.catalogue.RATIO_SOURCES`
    pair. Pre, per exposed unit: the same pair ``a``/``b`` over the unit's requests in the
    ``lookback_s`` seconds before its first exposure, from the request log (any experiment or
    none, shadow copies left out; the same status and column rules as the rollup). A unit has
    history for a metric when its ``b > 0`` (``h = 1``); ``a`` counts only then. Columns per
    source index ``i``: ``{sum}{i}`` for each name of :data:`BUILTIN_COVARIATE_SUMS`.
    """
    pairs = list(RATIO_SOURCES.values())
    sums = "".join(f", SUM(CASE WHEN {_OK} AND {cond} THEN {value} ELSE 0 END) AS {name}"
                   for name, (cond, value) in OK_SUMS.items())
    pre_log = f"""
            SELECT x.unit_id AS unit_id, x.variant AS variant, COUNT(*) AS requests,
                   {ST.sql_count_if(_OK)} AS ok, {ST.sql_count_if(ST.sql_error())} AS errors,
                   {ST.sql_count_if(f"status = '{ST.REJECTED}'")} AS rejected,
                   {ST.sql_count_if(f"status = '{ST.UNAVAILABLE}'")} AS unavailable,
                   SUM(CASE WHEN {_OK} THEN latency_ms ELSE 0 END) AS latency_sum{sums}
            FROM exposures x JOIN requests r ON r.unit_id = x.unit_id
            WHERE x.experiment_id = :e AND x.phase = :p AND r.shadow = :no AND {_window(scope, 'r.started_at')}
            GROUP BY x.unit_id, x.variant"""
    post_cols = ", ".join(f"{_PER_UNIT[m]} AS m{i}, {_PER_UNIT[d]} AS d{i}" for i, (m, d) in enumerate(pairs))
    pre_cols = ", ".join(f"{_PER_UNIT[m]} AS a{i}, {_PER_UNIT[d]} AS b{i}" for i, (m, d) in enumerate(pairs))
    zeros_pre = ", ".join(f"0.0 AS a{i}, 0.0 AS b{i}" for i in range(len(pairs)))
    zeros_post = ", ".join("0.0, 0.0" for _ in pairs)
    cols = [c for i in range(len(pairs)) for c in (f"m{i}", f"d{i}")]
    pre_names = [c for i in range(len(pairs)) for c in (f"a{i}", f"b{i}")]
    per_unit = ", ".join(f"SUM({c}) AS {c}" for c in cols + pre_names)
    flags = ", ".join(f"CASE WHEN b{i} > 0 THEN 1.0 ELSE 0.0 END AS h{i}" for i in range(len(pairs)))
    out = []
    for i in range(len(pairs)):
        m, d, a, b, h = (f"{c}{i}" for c in "mdabh")
        exprs = (m, f"{m} * {m}", d, f"{d} * {d}", f"{m} * {d}", h, f"{h} * {m}", f"{h} * {m} * {m}",
                 f"{h} * {d}", f"{h} * {d} * {d}", f"{h} * {m} * {d}", f"{h} * {a}", f"{h} * {a} * {a}",
                 f"{h} * {b}", f"{h} * {b} * {b}", f"{h} * {a} * {b}", f"{h} * {m} * {a}", f"{h} * {m} * {b}",
                 f"{h} * {d} * {a}", f"{h} * {d} * {b}")
        out.extend(f"SUM({e})" for e in exprs)
    # Per unit by UNION ALL and GROUP BY rather than an outer join (see covariate_rows).
    sql = f"""
        WITH pre_log AS ({pre_log}
        ), parts AS (
            SELECT unit_id, variant, 1 AS post, {post_cols}, {zeros_pre}
            FROM unit_outcomes WHERE experiment_id = :e AND phase = :p
            UNION ALL SELECT unit_id, variant, 0, {zeros_post}, {pre_cols} FROM pre_log
        ), u AS (
            SELECT variant, {per_unit} FROM parts GROUP BY unit_id, variant HAVING MAX(post) = 1
        )
        SELECT variant, COUNT(*), {", ".join(out)}
        FROM (SELECT u.*, {flags} FROM u) AS w GROUP BY variant ORDER BY variant"""
    names = ("variant", "units", *(f"{s}{i}" for i in range(len(pairs)) for s in BUILTIN_COVARIATE_SUMS))
    return _dicts(conn.execute(text(sql), {**scope.params, "lb": lookback_s}), names)


def _level(scope: Scope, dimension_param: str) -> str:
    """A unit's level of one dimension from ``exposures.segments`` ("other" when missing)."""
    if scope.is_pg:
        return f"COALESCE(CAST(x.segments AS jsonb) ->> {dimension_param}, 'other')"
    return f"COALESCE(json_extract(x.segments, '$.' || {dimension_param}), 'other')"


def segment_exposures(conn: Connection, scope: Scope, dimension: str) -> list[dict[str, Any]]:
    """Exposed units per (variant, level) of ``dimension``: the SRM check of each segment."""
    sql = f"""SELECT x.variant, {_level(scope, ':dim')} AS level, COUNT(*) FROM exposures x
              WHERE x.experiment_id = :e AND x.phase = :p GROUP BY 1, 2 ORDER BY 2, 1"""
    return _dicts(conn.execute(text(sql), {**scope.params, "dim": dimension}), ("variant", "level", "units"))


def segment_unit_rows(conn: Connection, scope: Scope, dimension: str) -> list[dict[str, Any]]:
    """:func:`unit_rows` per (variant, level of ``dimension``) instead of (variant, day): the
    ``unit_outcomes`` rollup joined to each unit's exposure row (one row per unit)."""
    per_unit = ", ".join(f"{expr} AS {name}" for name, expr in _PER_UNIT.items())
    source = f"""(SELECT uo.*, {_level(scope, ':dim')} AS level FROM unit_outcomes uo
                  JOIN exposures x ON x.experiment_id = uo.experiment_id AND x.phase = uo.phase
                                  AND x.unit_id = uo.unit_id AND x.variant = uo.variant
                  WHERE uo.experiment_id = :e AND uo.phase = :p) AS seg"""
    sql = f"""
        SELECT variant, level AS day, COUNT(*) AS units, {_UNIT_SUMS}
        FROM (SELECT variant, level, {per_unit} FROM {source}) AS u
        GROUP BY variant, level ORDER BY variant, level"""
    return _dicts(conn.execute(text(sql), {**scope.params, "dim": dimension}), _UNIT_NAMES)


def segment_event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str, window_s: int,
                       dimension: str) -> dict[str, list[dict[str, Any]]]:
    """:func:`event_rows` per (variant, level of ``dimension``), the level in the ``day`` field."""
    sums = "".join(f", SUM({y}), SUM(({y}) * ({y}))" for y in _KINDS.values())
    sql = f"""
        WITH {_attributed(scope)}
        SELECT x.variant, {_level(scope, ':dim')} AS level{sums}
        FROM per_unit a JOIN exposures x ON x.experiment_id = :e AND x.phase = :p
                                        AND x.unit_id = a.unit_id AND x.variant = a.variant
        GROUP BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s, "dim": dimension}
    names = ("variant", "level", *(f"{k}{suffix}" for k in _KINDS for suffix in ("", "_sq")))
    found = {(r["variant"], r["level"]): r for r in _dicts(conn.execute(text(sql), params), names)}
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KINDS}
    for cell in segment_exposures(conn, scope, dimension):
        sums_of = found.get((cell["variant"], cell["level"]), {})
        for kind, rows in out.items():
            rows.append({"variant": cell["variant"], "day": cell["level"], "units": cell["units"],
                         "sum": sums_of.get(kind, 0.0), "sum_sq": sums_of.get(f"{kind}_sq", 0.0)})
    return out
