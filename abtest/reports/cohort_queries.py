"""Queries of a sticky experiment's report by allocation cohort.

With sticky bucketing a phase's units include units first assigned in earlier phases (with
other weights) beside the phase's own. A unit's *cohort* is the phase of its
``sticky_assignments`` row (the phase in which it was first assigned; the report's phase when
it has none). These queries are :func:`~abtest.reports.queries.exposure_days`,
:func:`~abtest.reports.queries.unit_rows`, :func:`~abtest.reports.queries.event_rows` and
:func:`~abtest.reports.queries.cost_event_rows` with the cohort as the grouping key in place of
the day (in the ``day`` field, so that :mod:`abtest.reports.metrics` reads them unchanged); the
report of a sticky experiment runs them only when its phase holds more than one cohort, and
pools its comparisons with :func:`abtest.stats.allocation.stratified_test`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, text

from .queries import _KINDS, _PER_UNIT, _UNIT_NAMES, _UNIT_SUMS, Scope, _attributed, _dicts

__all__ = ["cohort_exposures", "cohort_unit_rows", "cohort_event_rows", "cohort_cost_event_rows"]


_COHORT = "COALESCE(s.phase, :p)"


def _sticky(alias: str) -> str:
    """The join that gives the rows of ``alias`` their unit's sticky row ``s`` (the cohort is
    :data:`_COHORT`: its phase, else the report's phase)."""
    return (f"LEFT JOIN sticky_assignments s ON s.experiment_id = {alias}.experiment_id "
            f"AND s.unit_id = {alias}.unit_id")


def cohort_exposures(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """Exposed units per (variant, cohort), the cohort in ``day``."""
    sql = f"""SELECT variant, day, COUNT(*) FROM (
                  SELECT x.variant, {_COHORT} AS day FROM exposures x {_sticky('x')}
                  WHERE x.experiment_id = :e AND x.phase = :p) AS c
              GROUP BY 1, 2 ORDER BY 2, 1"""
    return _dicts(conn.execute(text(sql), scope.params), ("variant", "day", "units"))


def cohort_unit_rows(conn: Connection, scope: Scope) -> list[dict[str, Any]]:
    """:func:`~abtest.reports.queries.unit_rows` per (variant, cohort)."""
    per_unit = ", ".join(f"{expr} AS {name}" for name, expr in _PER_UNIT.items())
    sql = f"""
        SELECT variant, day, COUNT(*) AS units, {_UNIT_SUMS}
        FROM (SELECT uo.variant, {_COHORT} AS day, {per_unit} FROM unit_outcomes uo {_sticky('uo')}
              WHERE uo.experiment_id = :e AND uo.phase = :p) AS u
        GROUP BY variant, day ORDER BY variant, day"""
    return _dicts(conn.execute(text(sql), scope.params), _UNIT_NAMES)


def cohort_event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str,
                      window_s: int, exposed: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """:func:`~abtest.reports.queries.event_rows` per (variant, cohort); ``exposed`` is
    :func:`cohort_exposures` (every exposed unit counts, 0 without events)."""
    sums = "".join(f", SUM({y}), SUM(({y}) * ({y}))" for y in _KINDS.values())
    sql = f"""
        WITH {_attributed(scope)}
        SELECT x.variant, {_COHORT} AS day{sums}
        FROM per_unit a JOIN exposures x ON x.experiment_id = :e AND x.phase = :p
                                        AND x.unit_id = a.unit_id AND x.variant = a.variant
        {_sticky('x')}
        GROUP BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s}
    names = ("variant", "day", *(f"{k}{suffix}" for k in _KINDS for suffix in ("", "_sq")))
    found = {(r["variant"], r["day"]): r for r in _dicts(conn.execute(text(sql), params), names)}
    out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in _KINDS}
    for cell in exposed:
        sums_of = found.get((cell["variant"], cell["day"]), {})
        for kind, rows in out.items():
            rows.append({"variant": cell["variant"], "day": cell["day"], "units": cell["units"],
                         "sum": sums_of.get(kind, 0.0), "sum_sq": sums_of.get(f"{kind}_sq", 0.0)})
    return out


def cohort_cost_event_rows(conn: Connection, scope: Scope, experiment_key: str, event_name: str,
                           window_s: int) -> list[dict[str, Any]]:
    """:func:`~abtest.reports.queries.cost_event_rows` per (variant, cohort)."""
    sql = f"""
        WITH {_attributed(scope)}
        SELECT x.variant, x.day, COUNT(*), SUM(m), SUM(m * m), SUM(d), SUM(d * d), SUM(m * d)
        FROM (SELECT x.variant, {_COHORT} AS day, COALESCE(u.cost_sum, 0) AS m,
                     CAST(COALESCE(a.n_ev, 0) AS double precision) AS d
              FROM exposures x
              LEFT JOIN unit_outcomes u ON u.experiment_id = x.experiment_id AND u.phase = x.phase
                                       AND u.unit_id = x.unit_id AND u.variant = x.variant
              LEFT JOIN per_unit a ON a.unit_id = x.unit_id AND a.variant = x.variant
              {_sticky('x')}
              WHERE x.experiment_id = :e AND x.phase = :p) AS x
        GROUP BY 1, 2 ORDER BY 1, 2"""
    params = {**scope.params, "key": experiment_key, "name": event_name, "w": window_s}
    return _dicts(conn.execute(text(sql), params), ("variant", "day", "units", "m", "m_sq", "d", "d_sq", "m_d"))
