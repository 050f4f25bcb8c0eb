"""A small Prometheus registry (text exposition format 0.0.4): counters, gauges, histograms.

Per process: under gunicorn with several workers each process exposes its own numbers (scrape
each, or sum in Prometheus).
"""

from __future__ import annotations

import bisect
import threading
from collections import defaultdict

__all__ = ["Registry", "LATENCY_BUCKETS_MS", "BATCH_BUCKETS"]

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)

Labels = tuple[tuple[str, str], ...]


def _fmt(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    body = ",".join(f'{k}="{str(v).replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
                    for k, v in items)
    return "{" + body + "}"


class Registry:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)
        self._hist: dict[str, dict[Labels, list[float]]] = defaultdict(dict)
        self._buckets: dict[str, tuple[float, ...]] = {}

    def counter(self, name: str, help_: str) -> None:
        self._help[name] = ("counter", help_)

    def gauge(self, name: str, help_: str) -> None:
        self._help[name] = ("gauge", help_)

    def histogram(self, name: str, help_: str, buckets: tuple[float, ...]) -> None:
        self._help[name] = ("histogram", help_)
        self._buckets[name] = tuple(buckets)

    def inc(self, name: str, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[name][key] = self._values[name].get(key, 0.0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[name][tuple(sorted(labels.items()))] = value

    def observe(self, name: str, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        buckets = self._buckets[name]
        with self._lock:
            # per bucket counts (non-cumulative), then +Inf, sum, count
            row = self._hist[name].setdefault(key, [0.0] * (len(buckets) + 3))
            row[bisect.bisect_left(buckets, value)] += 1
            row[-2] += value
            row[-1] += 1

    def render(self) -> str:
        lines: list[str] = []
        with self._lock:
            for name, (kind, help_) in self._help.items():
                lines += [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]
                if kind == "histogram":
                    lines += self._render_hist(name)
                else:
                    lines += [f"{name}{_fmt(k)} {v:g}" for k, v in self._values[name].items()]
        return "\n".join(lines) + "\n"

    def _render_hist(self, name: str) -> list[str]:
        out = []
        buckets = self._buckets[name]
        for key, row in self._hist[name].items():
            running = 0.0
            for bound, count in zip((*buckets, float("inf")), row):
                running += count
                le = "+Inf" if bound == float("inf") else f"{bound:g}"
                out.append(f"{name}_bucket{_fmt(key, (('le', le),))} {running:g}")
            out += [f"{name}_sum{_fmt(key)} {row[-2]:g}", f"{name}_count{_fmt(key)} {row[-1]:g}"]
        return out
