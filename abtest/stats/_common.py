"""Shared validation helpers, result types and explanatory messages.

Every analysis in :mod:`abtest.stats` follows one contract:

* *Invalid arguments* (negative counts, ``alpha`` outside (0, 1), a quantile
  level outside (0, 1), non-finite sums) are programming or configuration
  errors and raise :class:`ValueError` immediately.
* *Expected analysis failures* (an empty variant, fewer than two units, zero
  variance, a zero baseline for a relative lift) are normal states of a young
  experiment; they come back as results whose ``error`` field holds one of the
  human-readable messages below, so a report can show them next to the metric.
  Each message is a :class:`Failure`: the text (a ``str``, as reports show it) with a
  stable ``code`` (``"zero_variance"``, ``"empty_variant"``, ...) that code branches on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Effect",
    "Failure",
    "failure_code",
    "MSG_EMPTY_VARIANT",
    "MSG_TOO_FEW_UNITS",
    "MSG_ZERO_VARIANCE",
    "MSG_ZERO_BASELINE",
    "MSG_ZERO_RELATIVE_VARIANCE",
    "MSG_ZERO_DENOMINATOR",
    "MSG_TOO_FEW_FOR_QUANTILE",
    "check_alpha",
    "check_count",
    "check_finite",
    "check_probability",
]



class Failure(str):
    """An expected analysis failure: its message (this string) and a stable ``code``."""

    code: str

    def __new__(cls, code: str, message: str) -> "Failure":
        obj = super().__new__(cls, message)
        obj.code = code
        return obj

    def __reduce__(self) -> tuple[type, tuple[str, str]]:
        return Failure, (self.code, str(self))


def failure_code(error: str | None) -> str | None:
    """The code of an analysis failure (None for no error or a message without a code)."""
    return getattr(error, "code", None)


MSG_EMPTY_VARIANT = Failure("empty_variant", "a variant has no units yet")
MSG_TOO_FEW_UNITS = Failure("too_few_units", "a variant has fewer than 2 units; its variance is undefined")
MSG_ZERO_VARIANCE = Failure("zero_variance", "both variants have zero variance; no test is possible")
MSG_ZERO_BASELINE = Failure("zero_baseline", "the control mean is zero; a relative lift is undefined")
MSG_ZERO_RELATIVE_VARIANCE = Failure(
    "zero_relative_variance",
    "the treatment is constant at zero, so the relative lift's delta-method variance is zero; "
    "read the absolute difference")
MSG_ZERO_DENOMINATOR = Failure("zero_denominator", "a ratio metric has a zero denominator sum (no requests)")
MSG_TOO_FEW_FOR_QUANTILE = Failure(
    "too_few_for_quantile", "too few requests for a confidence interval at this quantile level"
)


def check_alpha(alpha: float) -> float:
    """Return ``alpha`` as float, raising ValueError unless 0 < alpha < 1."""
    return check_probability(alpha, "alpha")


def check_probability(value: float, name: str) -> float:
    """Return ``value`` as float, raising ValueError unless 0 < value < 1."""
    v = float(value)
    if not 0.0 < v < 1.0:
        raise ValueError(f"{name} must be strictly between 0 and 1, got {value!r}")
    return v


def check_count(value: float, name: str) -> int:
    """Return a non-negative integer count, raising ValueError otherwise."""
    if isinstance(value, bool) or not float(value).is_integer() or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def check_finite(value: float, name: str) -> float:
    """Return ``value`` as float, raising ValueError if it is NaN or infinite."""
    v = float(value)
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return v


@dataclass(frozen=True)
class Effect:
    """One estimated effect (absolute difference or relative lift) with its CI.

    Attributes:
        estimate: point estimate (treatment - control, or treatment / control - 1).
        se: standard error of ``estimate``.
        ci_lower, ci_upper: two-sided (1 - alpha) confidence interval.
        p_value: two-sided p-value of the null hypothesis "effect == 0".
        df: degrees of freedom of the t reference distribution, or None when
            the normal distribution was used (quantiles). Every field is a
            finite float or None, so results serialise to strict JSON.
    """

    estimate: float
    se: float
    ci_lower: float
    ci_upper: float
    p_value: float
    df: float | None

    def excludes_zero(self) -> bool:
        """True when the CI lies entirely above or entirely below zero."""
        return self.ci_lower > 0.0 or self.ci_upper < 0.0
