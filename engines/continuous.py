"""Continuous (iteration-level) batching: requests join a running decode between two steps and
leave it as soon as they finish, instead of waiting for the whole static batch.

Same interface as :class:`~engines.scheduler.BatchingScheduler` (submit / queue_depth / close,
Futures, Overloaded, drain). Each row of the KV cache holds one request from slot 0 (no padding);
a decode step feeds every live row its own position (``DecoderRunner.decode_ragged``). New
requests are prefilled together (left-padded, as in ``Engine.generate``) and their cache rows
copied in; finished rows are resolved at once and the cache compacted.

Chunked prefill: a prompt longer than ``prefill_chunk`` tokens (spec field, default 256) is
prefilled one chunk per iteration, between the decode steps of the running rows, so a long
prompt joining stalls them by at most one chunk; it joins the decode once its prompt is in.

KV budget: the decode cache is one tensor per layer of rows x slots, so its bytes are
``kv_bytes(longest prompt + limit, rows)``. A request joins only while that stays within the
spec's ``kv_budget_gb`` (counting the rows still prefilling); one that does not fit waits, in
arrival order, until finished rows make room. A lone request larger than the budget still runs,
as it does in a static batch. The cache grows by doubling, never past the budget.
"""

from __future__ import annotations

import logging
import time
from collections import deque

import torch

from engines.generation import Row
from engines.scheduler import BatchingScheduler, Expired, _Pending
from engines.types import EngineError

log = logging.getLogger(__name__)

__all__ = ["ContinuousBatchingScheduler"]

ADMIT_STEPS = 4


class _Live:
    __slots__ = ("row", "pending", "t_admit", "t_first", "slot", "tok", "max_batch", "waited")

    def __init__(self, row: Row, pending: _Pending, t_admit: float):
        self.row = row
        self.pending = pending
        self.t_admit = t_admit
        self.t_first = 0.0
        self.slot = 0  # cache slot (= position) of the token fed next
        self.tok = 0  # token fed next
        self.max_batch = 0
        self.waited = False  # held back for room in the KV budget


class _Prefill:
    """A long prompt being prefilled chunk by chunk into a cache of its own (one row)."""

    __slots__ = ("live", "cache", "done")

    def __init__(self, live: _Live, cache):
        self.live, self.cache, self.done = live, cache, 0


class ContinuousBatchingScheduler(BatchingScheduler):
    """``max_batch_size`` here bounds the rows of the running decode, prefilling ones included
    (default: the spec's, capped at 64); ``kv_budget_gb`` its decode cache (default: the spec's)."""

    def __init__(self, engine, *, max_batch_size: int | None = None, max_wait_ms: float | None = None,
                 max_queue: int | None = None, name: str | None = None, idle_gap_ms: float | None = None,
                 prefill_chunk: int | None = None, kv_budget_gb: float | None = None):
        spec = getattr(engine, "spec", None)
        if max_batch_size is None:
            max_batch_size = min(64, getattr(spec, "max_batch_size", 64))
        self.prefill_chunk = int(prefill_chunk if prefill_chunk is not None else getattr(spec, "prefill_chunk", 256))
        if self.prefill_chunk < 1:
            raise ValueError("prefill_chunk must be >= 1")
        self._prefilling: deque[_Prefill] = deque()
        self._waiting: deque[_Live] = deque()  # started, held back until the KV budget has room
        self.kv_budget = float(kv_budget_gb if kv_budget_gb is not None else getattr(spec, "kv_budget_gb", 3.0)) * 2**30
        if self.kv_budget <= 0:
            raise ValueError("kv_budget_gb must be > 0")
        self.kv_waits = 0  # requests that waited for room in the KV budget
        self.kv_peak_bytes = 0  # the largest decode cache allocated so far
        self.prefill_chunks_run = 0
        self._live: list[_Live] = []
        self._cache = None
        self._cap_t = self._cap_rows = 0
        self.steps_run = 0
        self._step_s = 0.0  # the latest decode step's duration
        super().__init__(engine, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms, max_queue=max_queue,
                         name=name, idle_gap_ms=idle_gap_ms)

    # ------------------------------------------------------------------ worker

    def _take(self) -> list[_Pending] | None:
        """Requests to admit now: when idle, wait like the static batcher (size or deadline);
        while decoding, what is queued, once it is a quarter of the running rows or its oldest
        has waited ``ADMIT_STEPS`` decode steps (never waiting on the queue itself)."""
        if not self._live and not self._prefilling and not self._waiting:
            return self._next_batch()
        with self._cond:
            if not self._queue:
                return []
            # each admission is a prefill pass of its own, which re-reads every weight: while many
            # rows decode, newcomers gather until they are a quarter of them or the oldest has
            # waited ADMIT_STEPS decode steps
            live = len(self._live)
            waited = time.monotonic() - self._queue[0].t_submit
            if len(self._queue) * 4 < live and waited < ADMIT_STEPS * self._step_s:
                return []
            room = self.max_batch_size - live - len(self._prefilling) - len(self._waiting)
            n = min(room, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def _loop(self) -> None:
        while True:
            admit = self._take()
            if admit is None:
                return
            try:
                self.engine.compute_thread.run(self._iteration, admit)
            except BaseException as e:  # noqa: BLE001 - fail the live requests, keep serving
                log.exception("continuous batch step failed")
                err = e if isinstance(e, EngineError) else EngineError(f"generation failed: {type(e).__name__}: {e}")
                for lv in [*self._live, *(pf.live for pf in self._prefilling), *self._waiting]:
                    if not lv.pending.future.done():
                        lv.pending.future.set_exception(err)
                self._live, self._cache, self._cap_t, self._cap_rows = [], None, 0, 0
                self._prefilling.clear()
                self._waiting.clear()
                for p in admit or []:
                    if not p.future.done():
                        p.future.set_exception(err)
                if not isinstance(e, Exception):
                    raise

    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue) + len(self._waiting)

    def _iteration(self, admit: list[_Pending]) -> None:
        """Admit, one prefill chunk, one decode step: on the engine's compute thread (:mod:`engines.compute`)."""
        with self.engine.lock:
            if admit or self._waiting:
                self._admit(admit)
            if self._prefilling:
                self._prefill_step()
            if self._live:
                self._step()

    def _ensure_cache(self, need_rows: int, need_t: int) -> None:
        """A decode cache of at least ``need_rows`` rows and ``need_t`` slots; grown by doubling
        (rows up to ``max_batch_size``), the live rows copied over."""
        runner = self.engine.runner
        if self._cache is not None and need_t <= self._cap_t and need_rows <= self._cap_rows:
            return
        cap_t = self._cap_t if need_t <= self._cap_t else min(
            max(need_t, 2 * self._cap_t, 128), max(need_t, self.engine.spec.context_window))
        rows = self._cap_rows if need_rows <= self._cap_rows else min(
            self.max_batch_size, max(need_rows, 2 * self._cap_rows, 8))
        if runner.kv_bytes(cap_t, rows) > self.kv_budget:  # doubling stops at the budget
            rows = max(need_rows, min(rows, int(self.kv_budget // max(1, runner.kv_bytes(cap_t)))))
            if runner.kv_bytes(cap_t, rows) > self.kv_budget:
                cap_t, rows = need_t, need_rows  # exactly what is needed (admission kept it in budget)
        # zeros, not empty: slots past a row's length are masked, but a masked NaN still poisons
        # the attention output (0 * NaN); stale values of earlier rows are finite
        new = [(k.zero_(), v.zero_()) for k, v in runner.new_cache(rows, cap_t)]
        self.kv_peak_bytes = max(self.kv_peak_bytes, runner.kv_bytes(cap_t, rows))
        n = len(self._live)
        if self._cache is not None and n:
            for (k, v), (nk, nv) in zip(self._cache, new):
                # a sliding layer's ring keeps slot s at s % W: the old entries keep their index
                nk[:n, :, : k.shape[2]] = k[:n]
                nv[:n, :, : v.shape[2]] = v[:n]
        self._cache, self._cap_t, self._cap_rows = new, cap_t, rows

    def _fits(self, lv: _Live, new: list[_Live]) -> bool:
        """Whether ``lv`` can join now: the decode cache for every row (running, prefilling, just
        admitted, and it) at the longest of their lengths stays within the KV budget."""
        others = [*self._live, *(pf.live for pf in self._prefilling), *new]
        if not others:
            return True  # a lone request runs whatever its size
        need_t = max(len(x.row.ids) + x.row.limit for x in [*others, lv])
        return self.engine.runner.kv_bytes(need_t, len(others) + 1) <= self.kv_budget

    def _start(self, pendings: list[_Pending], t_admit: float) -> None:
        """Start the taken requests' rows (checked, tokenized) and queue them for admission."""
        for p in pendings:
            if not p.future.set_running_or_notify_cancel():
                continue  # cancelled while it waited
            if not p.alive():  # its caller's deadline passed while it waited
                p.future.set_exception(Expired("the caller stopped waiting before the request ran"))
                continue
            try:
                row = self.engine.start_row(0, p.request, (t_admit - p.t_submit) * 1e3, p.alive, p.on_text)
            except EngineError as e:
                p.future.set_exception(e)
                continue
            self._waiting.append(_Live(row, p, t_admit))

    @torch.inference_mode()
    def _admit(self, pendings: list[_Pending]) -> None:
        eng = self.engine
        t_admit = time.monotonic()
        self._start(pendings, t_admit)
        new: list[_Live] = []
        while self._waiting:  # in arrival order: the oldest waits for room, the rest behind it
            lv = self._waiting[0]
            if lv.row.alive is not None and not lv.row.alive():
                self._waiting.popleft()
                lv.row.finish, lv.row.t_done = "expired", time.monotonic()
                lv.t_first = lv.row.t_done
                self._resolve(lv)
                continue
            if not self._fits(lv, new):
                for held in self._waiting:  # it and everyone behind it wait for room
                    if not held.waited:
                        held.waited = True
                        self.kv_waits += 1
                break
            self._waiting.popleft()
            lv.t_admit = t_admit
            lv.row.queue_ms = (t_admit - lv.pending.t_submit) * 1e3
            if len(lv.row.ids) > self.prefill_chunk:
                self._prefilling.append(_Prefill(lv, eng.runner.new_cache(1, len(lv.row.ids))))
            else:
                new.append(lv)
        if not new:
            return
        runner = eng.runner
        dev = eng.device
        B = len(new)
        lens = [len(lv.row.ids) for lv in new]
        P = max(lens)
        ids = torch.full((B, P), eng.pad_id, dtype=torch.long)
        for b, lv in enumerate(new):
            ids[b, P - lens[b]:] = torch.tensor(lv.row.ids, dtype=torch.long)
        pad_t = torch.tensor([P - n for n in lens], dtype=torch.long)
        positions = (torch.arange(P)[None, :] - pad_t[:, None]).clamp_(min=0).to(dev)
        key_valid = (torch.arange(P)[None, :] >= pad_t[:, None]).to(dev) if any(pad_t.tolist()) else None
        tmp = runner.new_cache(B, P)
        logits = runner.forward(ids.to(dev), positions, 0, tmp, key_valid, last_only=True)[:, -1]
        first = eng.sample(logits, [lv.row for lv in new]).tolist()
        now = time.monotonic()
        for lv in new:  # the prefill's time, shared by the rows it ran (the engine's compute share)
            lv.row.compute += (now - t_admit) / len(new)
        need_t = max(len(lv.row.ids) + lv.row.limit for lv in new + self._live)
        self._ensure_cache(len(self._live) + B, need_t)
        for b, lv in enumerate(new):
            self._join(lv, first[b], now, tmp, b, P - lens[b])

    def _join(self, lv: _Live, first: int, now: float, tmp, b: int, pad: int) -> None:
        """A prefilled row takes its first token; unless that ends it, its KV (row ``b`` of the
        prefill cache ``tmp``, ``pad`` slots of left padding) moves into the decode's cache."""
        lv.t_first = now
        r = lv.row
        if self.engine.advance(r, first):
            r.t_done = now
            self._resolve(lv)
            return
        n_ids = len(r.ids)
        P = n_ids + pad  # the prefill cache's slots
        dst = len(self._live)
        for (k, v), (tk, tv) in zip(self._cache, tmp):
            if tk.shape[2] < P:  # a ring (slot s at s % R), left-padded: shift to slot 0
                k[dst] = torch.roll(tk[b], -pad, dims=1)
                v[dst] = torch.roll(tv[b], -pad, dims=1)
            else:
                k[dst, :, :n_ids] = tk[b, :, pad:P]
                v[dst, :, :n_ids] = tv[b, :, pad:P]
        lv.slot, lv.tok = n_ids, first
        self._live.append(lv)
        n = len(self._live)
        for other in self._live:
            other.max_batch = max(other.max_batch, n)

    @torch.inference_mode()
    def _prefill_step(self) -> None:
        """One chunk of the oldest long prompt; when its last chunk is in, it joins the decode."""
        eng = self.engine
        pf = self._prefilling[0]
        lv, r = pf.live, pf.live.row
        if r.alive is not None and not r.alive():  # its caller left while it prefilled
            self._prefilling.popleft()
            r.finish, r.t_done = "expired", time.monotonic()
            lv.t_first = r.t_done
            self._resolve(lv)
            return
        t0 = time.monotonic()
        s, e = pf.done, min(len(r.ids), pf.done + self.prefill_chunk)
        ids = torch.tensor([r.ids[s:e]], dtype=torch.long, device=eng.device)
        positions = torch.arange(s, e, device=eng.device)[None]
        logits = eng.runner.forward(ids, positions, s, pf.cache, None, last_only=True)[:, -1]
        pf.done = e
        self.prefill_chunks_run += 1
        now = time.monotonic()
        r.compute += now - t0
        if e < len(r.ids):
            return
        self._prefilling.popleft()
        first = eng.sample(logits, [r]).tolist()[0]
        self._ensure_cache(len(self._live) + 1, max(len(x.row.ids) + x.row.limit for x in [lv, *self._live]))
        self._join(lv, first, time.monotonic(), pf.cache, 0, 0)

    def _resolve(self, lv: _Live) -> None:
        eng = self.engine
        r = lv.row
        res = eng.result(r, ttft_ms=(lv.t_first - lv.t_admit) * 1e3, decode_ms=(r.t_done - lv.t_first) * 1e3,
                         total_ms=r.queue_ms + (r.t_done - lv.t_admit) * 1e3, batch_size=max(1, lv.max_batch))
        self.requests_run += 1
        if r.finish == "expired":
            lv.pending.future.set_exception(Expired("the caller stopped waiting; the request left its batch"))
        else:
            lv.pending.future.set_result(res)

    @torch.inference_mode()
    def _step(self) -> None:
        eng = self.engine
        dev = eng.device
        live = self._live
        n = len(live)
        t_step = time.monotonic()
        tok = torch.tensor([lv.tok for lv in live], dtype=torch.long, device=dev)
        slots = torch.tensor([lv.slot for lv in live], dtype=torch.long, device=dev)
        end = max(lv.slot for lv in live) + 1
        view = [(k[:n], v[:n]) for k, v in self._cache]
        logits = eng.runner.decode_ragged(tok, slots, end, view)
        nxt = eng.sample(logits, [lv.row for lv in live]).tolist()
        self.steps_run += 1
        self.batch_sizes.append(n)
        now = time.monotonic()
        self._step_s = now - t_step
        keep = []
        for j, lv in enumerate(live):
            r = lv.row
            r.compute += (now - t_step) / n  # the step's time, shared by the rows it ran
            if eng.advance(r, nxt[j]):
                r.t_done = now
                self._resolve(lv)
            else:
                lv.slot += 1
                lv.tok = nxt[j]
                keep.append(j)
        if len(keep) < n:
            # each finished row's cache row takes the last live row (its used slots only): one
            # row copied per finished row, not every row shifted; row order does not matter
            rows = list(live)
            done = sorted(set(range(n)) - set(keep), reverse=True)
            for j in done:
                last = len(rows) - 1
                if j != last:
                    for k, v in self._cache:
                        m = min(k.shape[2], end + 1)
                        k[j, :, :m] = k[last, :, :m]
                        v[j, :, :m] = v[last, :, :m]
                    rows[j] = rows[last]
                rows.pop()
            self._live = rows
