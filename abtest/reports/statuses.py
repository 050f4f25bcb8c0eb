"""Which request statuses count how, defined once for the Python rollups and the SQL queries.

* ``ok``: a served request; only its latency counts towards the latency metrics.
* ``error`` and ``timeout`` count as errors (the error rate's numerator).
* ``rejected`` (a product limit, e.g. a prompt over the context window) and ``unavailable``
  (the infrastructure's: broker down, engine still loading) are excluded from the error rate's
  denominator; each is reported per variant as its own count.
* ``cancelled``: the client went away mid-stream (the request left its batch). Not an error:
  the engine was serving it when its caller stopped listening. It stays in the error rate's
  denominator (the engine did not fail that request) and, not being ``ok``, in no latency
  or token metric.

Pure: :func:`sql_in` renders a tuple below as a SQL predicate (literals, no parameters).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["OK", "ERRORS", "EXCLUDED", "REJECTED", "UNAVAILABLE", "CANCELLED", "is_error", "in_denominator",
           "sql_in", "sql_error", "sql_in_denominator", "sql_count_if"]

OK = "ok"
REJECTED = "rejected"
UNAVAILABLE = "unavailable"
CANCELLED = "cancelled"
ERRORS: tuple[str, ...] = ("error", "timeout")
EXCLUDED: tuple[str, ...] = (REJECTED, UNAVAILABLE)


def is_error(status: str) -> bool:
    return status in ERRORS


def in_denominator(status: str) -> bool:
    """Whether a request counts in the error rate's denominator."""
    return status not in EXCLUDED


def sql_in(statuses: Iterable[str], column: str = "status", negate: bool = False) -> str:
    """``column IN ('a', 'b')`` (or ``NOT IN``) for statuses of this module."""
    names = ", ".join(f"'{s}'" for s in statuses)
    return f"{column} {'NOT IN' if negate else 'IN'} ({names})"


def sql_error(column: str = "status") -> str:
    return sql_in(ERRORS, column)


def sql_in_denominator(column: str = "status") -> str:
    return sql_in(EXCLUDED, column, negate=True)


def sql_count_if(predicate: str) -> str:
    """Portable ``COUNT(*) FILTER (WHERE predicate)``."""
    return f"SUM(CASE WHEN {predicate} THEN 1 ELSE 0 END)"
