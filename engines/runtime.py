"""Engines: batched generation with a static KV cache over a loaded decoder.

``load_engine(spec)`` gives an :class:`Engine`; ``Engine.generate(requests)`` runs them as one
batch (left-padded prompts, one prefill, then one decode step per token for the whole batch,
finished rows dropped from the batch as it shrinks) and returns, in order, a result or an
:class:`~engines.types.EngineError` per request.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from engines import compute
from engines.device import DeviceError, check_device
from engines.decoder import DecoderRunner
from engines.model import LoadedModel, load_model
from engines.spec import EngineSpec, check_checkpoint
from engines.streaming import TextSink
from engines.scoring import Scoring
from engines.generation import GenerationCore, Row
from engines.types import (
    EngineClosed,
    EngineError,
    GenerationRequest,
    GenerationResult,
    InvalidRequest,
    PromptTooLong,
)

log = logging.getLogger(__name__)

__all__ = ["Engine", "load_engine"]

# Bound on the attention score tensor of one prefill chunk (bytes): long prompts prefill in chunks.
_PREFILL_SCORE_BYTES = 256 * 2**20


def load_engine(spec: EngineSpec, compute_thread: compute.ComputeThread | None = None) -> "Engine":
    """Load the engine a spec describes (the checkpoint must exist locally).

    Before anything is loaded: raises :class:`~engines.device.DeviceError` when the spec's
    device is not usable on this machine, and :class:`FileNotFoundError` naming the directory
    (and how to build the demo checkpoints) when the checkpoint is missing.
    """
    try:
        check_device(spec.device)
    except DeviceError as e:
        raise DeviceError(f"engine {spec.name!r}: {e.message}") from None
    check_checkpoint(spec)
    thread = compute_thread or compute.ComputeThread(f"engine-{spec.name}")
    eng = thread.run(_load, spec)
    eng.compute_thread = thread
    return eng


def _load(spec: EngineSpec) -> "Engine":
    if spec.num_threads:
        torch.set_num_threads(spec.num_threads)
    t0 = time.perf_counter()
    loaded = load_model(spec.checkpoint, precision=spec.precision, device=spec.device,
                        group_size=spec.group_size, attention=spec.attention, int4_kernel=spec.int4_kernel,
                        int4_dequant_rows=spec.int4_dequant_rows, int4_amx_rows=spec.int4_amx_rows)
    eng = Engine(spec, loaded)
    eng.load_seconds = time.perf_counter() - t0
    return eng


class Engine(Scoring, GenerationCore):
    """One loaded model plus its generation loop. ``generate`` is thread-safe (serialised)."""

    def __init__(self, spec: EngineSpec, loaded: LoadedModel):
        self.spec = spec
        # where this engine's torch work runs (engines.compute); load_engine gives it its own
        self.compute_thread = compute.default()
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        # the engine enforces its own context window (per request); silence HF's length warning
        self.tokenizer.model_max_length = int(1e12)
        self.device = loaded.device
        self.runner = DecoderRunner(loaded, spec.context_window, spec.attention, spec.sliding_window)
        self.load_seconds = 0.0
        self.lock = threading.Lock()  # one generation (or scoring) at a time; the schedulers hold it per step
        self._closed = False
        self._seed_rng = torch.Generator().manual_seed(0x5EED)
        self.eos_ids = self._eos_ids(Path(spec.checkpoint))
        tok = self.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else (min(self.eos_ids) if self.eos_ids else 0)
        self.pad_id = int(pad)
        self.bos_id = tok.bos_token_id

    # ---------------------------------------------------------------------------------------

    def _eos_ids(self, ckpt: Path) -> set[int]:
        ids: set[int] = set()

        def add(v):
            if isinstance(v, int):
                ids.add(v)
            elif isinstance(v, (list, tuple)):
                ids.update(int(x) for x in v)

        gc = ckpt / "generation_config.json"
        if gc.is_file():
            try:
                add(json.loads(gc.read_text()).get("eos_token_id"))
            except (OSError, ValueError):
                pass
        add(getattr(self.loaded.config, "eos_token_id", None))
        add(self.tokenizer.eos_token_id)
        return ids

    def encode(self, text: str) -> list[int]:
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not ids and self.bos_id is not None:
            ids = [int(self.bos_id)]
        return list(ids)

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))

    def weight_bytes(self) -> int:
        return self.loaded.weight_bytes()

    def close(self) -> None:
        with self.lock:
            self._closed = True

    # ---------------------------------------------------------------------------------------

    def _validate(self, req) -> list[int]:
        if not isinstance(req, GenerationRequest):
            raise InvalidRequest(f"expected a GenerationRequest, got {type(req).__name__}")
        if not isinstance(req.prompt, str):
            raise InvalidRequest("prompt must be a string")
        if not isinstance(req.max_new_tokens, int) or isinstance(req.max_new_tokens, bool) or req.max_new_tokens < 1:
            raise InvalidRequest(f"max_new_tokens must be a positive integer, got {req.max_new_tokens!r}")
        if not isinstance(req.temperature, (int, float)) or not math.isfinite(req.temperature) or req.temperature < 0:
            raise InvalidRequest(f"temperature must be a finite number >= 0, got {req.temperature!r}")
        if not isinstance(req.top_p, (int, float)) or not (0 < req.top_p <= 1):
            raise InvalidRequest(f"top_p must be in (0, 1], got {req.top_p!r}")
        if not isinstance(req.stop, (tuple, list)) or not all(isinstance(s, str) and s for s in req.stop):
            raise InvalidRequest("stop must be a sequence of non-empty strings")
        if req.seed is not None and (not isinstance(req.seed, int) or isinstance(req.seed, bool)):
            raise InvalidRequest(f"seed must be an integer, got {req.seed!r}")
        try:  # text no tokenizer can take (a lone surrogate) fails this request alone
            ids = self.encode(req.prompt)
        except Exception as e:  # noqa: BLE001 - the tokenizer's own exception types vary
            raise InvalidRequest(f"prompt cannot be tokenized: {type(e).__name__}") from e
        if not ids:
            raise InvalidRequest("prompt is empty")
        ctx = self.spec.context_window
        if len(ids) >= ctx:
            raise PromptTooLong(
                f"prompt is {len(ids)} tokens; engine {self.spec.name} has a context window of {ctx} "
                f"tokens (prompt + at least one generated token must fit)"
            )
        return ids

    def generate(self, requests: Sequence[GenerationRequest], *, queue_ms: Sequence[float] | None = None,
                 alive: Sequence[Callable[[], bool]] | None = None,
                 on_text: Sequence[TextSink | None] | None = None) -> list[GenerationResult | EngineError]:
        """Run requests together; same length and order as ``requests``, a result or an error each.

        ``alive[i]()`` says whether request i's caller still waits: asked before each decode
        step, and a request whose caller stopped leaves the batch there, its result having
        ``finish_reason`` "expired" (the text so far), so the engine works no longer for it.
        ``on_text[i]`` (streaming) is called with request i's new text after each decode step
        (:class:`~engines.streaming.TextDeltas`); the deltas join up to the result's text.
        Runs on the engine's compute thread (:mod:`engines.compute`)."""
        return self.compute_thread.run(self._generate, requests, queue_ms, alive, on_text)

    def _generate(self, requests, queue_ms, alive, on_text) -> list[GenerationResult | EngineError]:
        out: list[GenerationResult | EngineError | None] = [None] * len(requests)
        with self.lock:
            if self._closed:
                raise EngineClosed(f"engine {self.spec.name} is closed")
            rows: list[Row] = []
            for i, req in enumerate(requests):
                try:
                    rows.append(self.start_row(i, req, queue_ms[i] if queue_ms else 0.0,
                                               alive[i] if alive else None, on_text[i] if on_text else None))
                except EngineError as e:
                    out[i] = e
            for chunk in self._chunks(rows):
                self._run_isolated(chunk, out)
        return out  # type: ignore[return-value]

    def _chunks(self, rows: list[Row]) -> list[list[Row]]:
        """Split into batches of at most max_batch_size rows whose KV cache fits the spec's budget."""
        r = self.runner
        budget = self.spec.kv_budget_gb * 2**30
        chunks: list[list[Row]] = []
        cur: list[Row] = []
        P = L = 0
        for row in rows:
            p2, l2 = max(P, len(row.ids)), max(L, row.limit)
            if cur and (len(cur) >= self.spec.max_batch_size or r.kv_bytes(p2 + l2, len(cur) + 1) > budget):
                chunks.append(cur)
                cur, p2, l2 = [], len(row.ids), row.limit
            cur.append(row)
            P, L = p2, l2
        if cur:
            chunks.append(cur)
        return chunks

    def _run_isolated(self, rows: list[Row], out: list) -> None:
        """Run a batch; if it fails as a whole, rerun its rows one by one so that only the
        request that causes the failure fails."""
        try:
            for r, res in zip(rows, self._run_batch(rows)):
                out[r.index] = res
        except Exception as e:  # noqa: BLE001 - reported per request
            if len(rows) == 1:
                log.exception("generation failed")
                err = e if isinstance(e, EngineError) else EngineError(f"generation failed: {type(e).__name__}: {e}")
                out[rows[0].index] = err
                return
            log.warning("batch of %d failed (%s); retrying requests one by one", len(rows), e)
            for r in rows:
                r.gen, r.finish, r.text = [], None, None
                if r.generator is not None:
                    r.generator.manual_seed(r.generator.initial_seed())
                self._run_isolated([r], out)

    # ---------------------------------------------------------------------------------------

    @torch.inference_mode()
    def _run_batch(self, rows: list[Row]) -> list[GenerationResult]:
        t_start = time.perf_counter()
        dev = self.device
        runner = self.runner
        B = len(rows)
        lens = [len(r.ids) for r in rows]
        P = max(lens)
        max_limit = max(r.limit for r in rows)
        T = P + max_limit - 1
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)
        pads = []
        for b, r in enumerate(rows):
            ids[b, P - lens[b]:] = torch.tensor(r.ids, dtype=torch.long)
            pads.append(P - lens[b])
        pad_t = torch.tensor(pads, dtype=torch.long)
        ids = ids.to(dev)
        positions = (torch.arange(P)[None, :] - pad_t[:, None]).clamp_(min=0).to(dev)
        key_valid = None
        if any(pads):
            key_valid = (torch.arange(T)[None, :] >= pad_t[:, None]).to(dev)
        cache = runner.new_cache(B, T)
        # prefill, in chunks bounded by the attention score memory
        per_q = B * runner.n_heads * max(T, 1) * 4
        qchunk = max(16, min(P, _PREFILL_SCORE_BYTES // per_q))
        logits = None
        for s in range(0, P, qchunk):
            e = min(P, s + qchunk)
            logits = runner.forward(ids[:, s:e], positions[:, s:e], s, cache, key_valid, last_only=True)
        tok = self.sample(logits[:, -1], rows)
        t_first = time.perf_counter()
        for r in rows:
            r.compute = (t_first - t_start) / B
        ctx = self.spec.context_window
        active = list(range(B))  # indices into `rows` of the rows still generating
        crow = list(range(B))  # cache row of each active row
        pad_c = pad_t.to(dev)  # left padding of each cache row
        CB = B  # rows in the cache (finished rows linger until the batch halves)
        slot = P
        t_step = t_first
        while True:
            toks = tok.tolist()
            now = time.perf_counter()
            if now > t_step:  # the decode step just done: shared by the rows that ran in it
                for b in active:
                    rows[b].compute += (now - t_step) / len(active)
            t_step = now
            still = []
            for j, b in enumerate(active):
                if self.advance(rows[b], toks[crow[j]]):
                    rows[b].t_done = now
                else:
                    still.append(j)
            if not still:
                break
            if len(still) < len(active):
                active = [active[j] for j in still]
                crow = [crow[j] for j in still]
                if len(active) <= CB // 2:  # compact: the copy pays for itself in fewer FLOPs
                    keep = torch.tensor(crow, dtype=torch.long, device=dev)
                    cache = runner.select_rows(cache, keep)
                    if key_valid is not None:
                        key_valid = key_valid.index_select(0, keep)
                    pad_c = pad_c.index_select(0, keep)
                    tok = tok.index_select(0, keep)
                    crow = list(range(len(active)))
                    CB = len(active)
            pos = (slot - pad_c).clamp_(0, ctx - 1)[:, None]
            logits = runner.forward(tok[:, None], pos, slot, cache, key_valid)[:, -1]
            slot += 1
            if CB != len(active):
                ct = torch.tensor(crow, dtype=torch.long, device=dev)
                new = self.sample(logits.index_select(0, ct), [rows[b] for b in active])
                tok = torch.full((CB,), self.pad_id, dtype=torch.long, device=dev)
                tok[ct] = new
            else:
                tok = self.sample(logits, [rows[b] for b in active])
        return [self.result(r, ttft_ms=(t_first - t_start) * 1e3, decode_ms=(r.t_done - t_first) * 1e3,
                            total_ms=r.queue_ms + (r.t_done - t_start) * 1e3, batch_size=B) for r in rows]
