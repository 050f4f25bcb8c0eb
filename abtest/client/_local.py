"""Local evaluation, the part both clients share: no I/O, no threads, no event loop.

:class:`LocalEvaluator` holds the last good definitions document, answers ``assign`` in
process with :func:`abtest.client.evaluation.assign` (the server's own function), keeps sticky
assignments in a :class:`~abtest.client.sticky.StickyStore`, and aggregates exposures per
(experiment, phase, unit) in an :class:`ExposureBuffer` until the client's pipeline sends
them. The clients only fetch (blocking or awaited) and hand the responses to
:meth:`LocalEvaluator.accept`.

What happens when the definitions cannot be had:

* never loaded (the server unreachable at start): ``assign`` answers ``fallback_variant``
  (default ``"control"``; the client cannot know the experiment's control key yet) with
  reason ``definitions_unavailable``, not enrolled and no exposure; or raises
  :class:`DefinitionsUnavailableError` with ``on_unavailable="raise"``.
* loaded, then the server unreachable: the last good definitions keep serving; their age is
  in :attr:`LocalEvaluator.status` (``age_s``, ``refresh_failures``, ``last_error``).
* a document that fails validation: refused whole (``rejected`` counted, ``last_error``
  names the field); the previous definitions stay in use.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

import httpx

from . import definitions as defs
from ._events import MAX_LENGTHS, check_json, check_text
from ._exceptions import DefinitionsUnavailableError, NotFoundError
from ._models import AssignResult
from .evaluation import ExperimentConfig, assign, in_holdout, should_store
from .segments import segment_levels
from .sticky import GuardedSticky, StickyStore

__all__ = ["LocalEvaluator", "ExposureBuffer", "DefinitionsStatus", "DEFINITIONS_PATH", "STREAM_PATH",
           "EVALUATIONS", "UNAVAILABLE_POLICIES"]

DEFINITIONS_PATH = "/v1/sdk/definitions"
STREAM_PATH = "/v1/sdk/definitions/stream"
EVALUATIONS = ("remote", "local")
UNAVAILABLE_POLICIES = ("fallback", "raise")
_MAX_UNIT = MAX_LENGTHS["unit_id"]


@dataclass(frozen=True)
class DefinitionsStatus:
    """Where a locally evaluating client stands. ``age_s``: seconds since the server last
    confirmed the definitions (a 200 or a 304), None before the first; ``fetched``: 200s taken,
    ``not_modified``: 304s, ``rejected``: documents refused as invalid, ``refresh_failures``:
    refreshes that got no usable answer; ``sticky_failures``: sticky-store calls that failed
    (each assignment then used plain hashing)."""

    version: str | None
    experiments: int
    age_s: float | None
    fetched: int
    not_modified: int
    rejected: int
    refresh_failures: int
    sticky_failures: int
    last_error: str | None


class ExposureBuffer:
    """Exposures aggregated per (experiment, phase, unit) until :meth:`drain`: one item per key,
    with its count and first/last time, and an id unique to this client (``<uuid>-<n>``) that
    the server deduplicates on, so a resent batch counts once. An experiment with dimensions
    also gets the unit's ``segments`` (:func:`~abtest.client.segments.segment_levels`) of the
    key's first exposure, as a server-side assignment keeps those of the unit's first.

    ``handing_over`` is held by whoever drains into a pipeline until the drained items are in
    it, so a ``flush`` that drains after it sees them: otherwise a flush could find the buffer
    empty while a background drain still held the items, and return before they were sent."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, int, str], list[Any]] = {}
        self._lock = threading.Lock()
        self.handing_over = threading.Lock()
        self._prefix = uuid.uuid4().hex
        self._ids = itertools.count(1)

    def add(self, experiment: str, phase: int, unit_id: str, variant: str, sticky: bool,
            dimensions: tuple[Mapping[str, Any], ...] = (), attributes: Mapping[str, Any] | None = None,
            holdout: bool = False) -> int:
        """Record one exposure; returns how many keys are buffered now. ``dimensions`` and
        ``attributes`` give the segments of a key's first exposure (later ones keep them);
        ``holdout``: of a unit its layer's holdout kept on the control."""
        now = time.time()
        key = (experiment, phase, unit_id)
        with self._lock:
            held = self._items.get(key)
            if held is None:
                self._items[key] = [variant, now, now, 1, sticky,
                                    segment_levels(dimensions, attributes) if dimensions else None, holdout]
            else:
                held[2] = now
                held[3] += 1
                held[4] = held[4] or sticky
            return len(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def drain(self) -> list[dict[str, Any]]:
        with self._lock:
            items, self._items = self._items, {}
        prefix, ids = self._prefix, self._ids
        # times as seconds since the epoch (the server takes them or ISO-8601): cheap to write
        out = []
        for (exp, phase, unit), (variant, first, last, count, sticky, segments, holdout) in items.items():
            item = {"exposure_id": f"{prefix}-{next(ids)}", "experiment": exp, "phase": phase, "unit_id": unit,
                    "variant": variant, "first_seen": round(first, 3), "last_seen": round(last, 3),
                    "count": count, "sticky": sticky}
            if segments is not None:
                item["segments"] = segments
            if holdout:
                item["holdout"] = True
            out.append(item)
        return out


class LocalEvaluator:
    def __init__(self, *, sticky_store: StickyStore | None, fallback_variant: str,
                 on_unavailable: str, clock: Any = time.monotonic) -> None:
        if on_unavailable not in UNAVAILABLE_POLICIES:
            raise ValueError(f"on_unavailable must be one of {UNAVAILABLE_POLICIES}, got {on_unavailable!r}")
        self.sticky = GuardedSticky(sticky_store) if sticky_store is not None else None
        self.fallback_variant, self.on_unavailable, self._clock = fallback_variant, on_unavailable, clock
        self.exposures = ExposureBuffer()
        self.version: str | None = None
        self.configs: dict[str, ExperimentConfig] = {}
        self._confirmed_at: float | None = None
        self._counts = dict.fromkeys(("fetched", "not_modified", "rejected", "refresh_failures"), 0)
        self._last_error: str | None = None
        self._results: dict[int, tuple[Any, AssignResult]] = {}

    @property
    def loaded(self) -> bool:
        return self.version is not None

    # ------------------------------------------------------------ definitions
    def request_headers(self) -> dict[str, str]:
        """Headers of the next definitions request (``If-None-Match`` once loaded)."""
        return {"If-None-Match": f'"{self.version}"'} if self.version else {}

    def accept(self, response: httpx.Response) -> bool:
        """Take one definitions response; True when the definitions changed."""
        if response.status_code == 304 and self.version is not None:
            self._counts["not_modified"] += 1
            self._confirmed_at = self._clock()
            return False
        if response.status_code != 200:
            self.failed(f"HTTP {response.status_code}: {response.text[:200]!r}")
            return False
        try:
            version, configs = defs.parse(json.loads(response.content))
        except (ValueError, defs.DefinitionsError) as exc:
            self._counts["rejected"] += 1
            self._last_error = f"definitions rejected: {exc}"
            return False
        changed = version != self.version
        self.version, self.configs, self._confirmed_at = version, configs, self._clock()
        self._results = {}
        self._counts["fetched"] += 1
        self._last_error = None
        return changed

    def failed(self, error: str) -> None:
        self._counts["refresh_failures"] += 1
        self._last_error = error

    @property
    def status(self) -> DefinitionsStatus:
        age = None if self._confirmed_at is None else self._clock() - self._confirmed_at
        return DefinitionsStatus(self.version, len(self.configs), age, **self._counts,
                                 sticky_failures=self.sticky.failures if self.sticky else 0,
                                 last_error=self._last_error)

    # ------------------------------------------------------------ assignment
    def assign(self, experiment: str, unit_id: str, attributes: Mapping[str, Any] | None) -> AssignResult:
        """The remote ``assign``'s answer, computed here; records the exposure to send."""
        if not (type(unit_id) is str and 0 < len(unit_id) <= _MAX_UNIT and unit_id.isascii()
                and "\x00" not in unit_id and not unit_id.isspace()):
            check_text("unit_id", unit_id)  # the common case above; the full check says what is wrong
        if attributes is not None:
            check_json("attributes", attributes)
        config = self.configs.get(experiment) if type(experiment) is str else None
        if config is None:
            check_text("experiment", experiment)  # a known key is valid: only unknown ones are checked
            if not self.loaded:
                return self._unavailable(experiment)
            raise NotFoundError(404, "not_found", f"no experiment with key {experiment!r}",
                                {"experiment": experiment})
        sticky = self.sticky
        stored = sticky.get(experiment, unit_id) if config.sticky and sticky is not None else None
        result = assign(config, unit_id, attributes, stored)
        fresh = should_store(config, result)
        if fresh and sticky is not None:
            sticky.save(experiment, unit_id, result.variant)
        if result.in_experiment:
            self.exposures.add(experiment, config.phase, unit_id, result.variant, fresh, config.dimensions, attributes)
        elif in_holdout(result):
            self.exposures.add(experiment, config.phase, unit_id, result.variant, False, holdout=True)
        # The evaluator answers with one object per distinct answer of a snapshot, and so do we.
        # Each entry holds its Assignment, so that id cannot be reused while the entry exists.
        entry = self._results.get(id(result))
        if entry is None or entry[0] is not result:
            entry = self._results[id(result)] = (result, self._result(
                experiment, result.variant, result.engine, result.in_experiment, result.reason))
        return entry[1]

    @staticmethod
    def _result(experiment: str, variant: str | None, engine: str | None, enrolled: bool,
                reason: str) -> AssignResult:
        return AssignResult(experiment, variant, engine, enrolled, reason,
                            raw={"experiment": experiment, "variant": variant, "engine": engine,
                                 "in_experiment": enrolled, "reason": reason})

    def _unavailable(self, experiment: str) -> AssignResult:
        if self.on_unavailable == "raise":
            raise DefinitionsUnavailableError(
                f"no experiment definitions loaded yet ({self._last_error or 'not fetched'})")
        return self._result(experiment, self.fallback_variant, None, False, "definitions_unavailable")
