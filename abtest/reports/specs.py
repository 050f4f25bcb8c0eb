"""What the report analyses: the experiment's metrics as :class:`MetricSpec` (built-ins first,
from :mod:`abtest.reports.catalogue`, then the configured event metrics)."""

from __future__ import annotations

from typing import Any

from .catalogue import BUILTINS
from .metrics import MetricSpec

__all__ = ["metric_specs"]


def metric_specs(exp: Any) -> list[MetricSpec]:
    """Built-ins first (with any configured role/margin/test), then the configured event metrics.
    ``exp`` is an :class:`abtest.models.Experiment` (anything with ``metrics`` rows)."""
    configured = {m.name: m for m in exp.metrics}
    specs = []
    for b in BUILTINS:
        m = configured.get(b.name)
        specs.append(MetricSpec(b.name, b.shape, "builtin", m.role if m else "secondary",
                                (m.direction if m else b.direction) == "increase", m.margin if m else 0.0,
                                test=m.test if m else None))
    for m in exp.metrics:
        if m.kind != "builtin":
            shape = "ratio" if m.kind == "cost_per_event" else "mean"  # cost per event: per-unit ratio
            specs.append(MetricSpec(m.name, shape, m.kind, m.role, m.direction == "increase", m.margin,
                                    m.event_name, m.attribution_window_s, m.test))
    return specs
