"""Output quality on live traffic: sampled completions scored teacher-forced by another engine.

The inference service tells :class:`QualityService` (a :class:`~abtest.services.inference.QualityHook`)
about every served request and every shadow copy. A request is *sampled* when a hash of its id
falls below the experiment's ``quality_sample`` (deterministic: a replay agrees); shadow copies
are sampled at ``quality_sample`` when it is set, else every one is scored. Two comparisons:

``treatment_vs_control``
    a sampled request served by the control: each (non-shadow) treatment's engine scores the
    control's completion; a shadow copy: the shadow engine scores the control's completion.
    The row's ``variant`` is the treatment (or shadow variant), its unit the control's.
``reference``
    a sampled request of a variant with a ``quality_reference`` (or a shadow copy of one): the
    reference engine scores that variant's own completion.

A job scores the completion on the generator's engine (``"task": "score"`` through the same
dispatcher as generation), then the scorer scores the very same token ids (the generator's
encoding of prompt and completion), and the job compares the two teacher-forced distributions on the same tokens with
:func:`compare`: ``agree`` counts the completion's tokens that are the scorer's argmax (top-1
agreement = agree / tokens) and ``kl_sum`` sums KL(generator || scorer) over the positions
(mean KL = kl_sum / tokens). When the engines' tokenizers differ, the scorer generates its own
greedy completion of the prompt (same ``max_new_tokens`` and stops) and the job records
:func:`text_similarity` of the two texts (method ``text``).

Nothing here runs on a request's thread but the sampling and a ``put_nowait``: jobs wait on a
bounded queue for a small pool of worker threads; a full queue drops the job. Every job's
outcome (ok, failed, dropped) becomes one ``quality_scores`` row, written in small batched
transactions by the service's own writer thread.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import queue
import threading
import uuid
from collections.abc import Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
from sqlalchemy import insert

from engines.types import ScoreResult

from ..db import Database
from ..errors import ABTestError
from ..evaluator import Assignment, ExperimentConfig, VariantConfig
from ..models import QualityScore

__all__ = ["PairScore", "compare", "text_similarity", "sampled", "QualityService",
           "TREATMENT_VS_CONTROL", "REFERENCE"]

log = logging.getLogger(__name__)

TREATMENT_VS_CONTROL = "treatment_vs_control"
REFERENCE = "reference"
_SCALE = float(2**64)


# --- the pure math (shared with benchmarks/quality.py) ------------------------------------

@dataclass(frozen=True)
class PairScore:
    """Sufficient statistics of one scored completion: ``agree`` of ``tokens`` positions are
    the scorer's argmax; ``kl_sum`` is the sum over positions of KL(generator || scorer)."""

    tokens: int
    agree: int
    kl_sum: float

    @property
    def agreement(self) -> float | None:
        return self.agree / self.tokens if self.tokens else None

    @property
    def kl(self) -> float | None:
        return self.kl_sum / self.tokens if self.tokens else None


def logprob_matrix(score: ScoreResult) -> np.ndarray:
    """The score's log-probabilities as a ``len(token_ids) x vocab_size`` float64 array."""
    flat = np.frombuffer(score.logprobs, dtype="<f4")
    return flat.reshape(len(score.token_ids), score.vocab_size).astype(np.float64)


def _normalised(logp: np.ndarray, vocab: int) -> np.ndarray:
    """Log-probabilities restricted to the first ``vocab`` entries, renormalised."""
    if logp.shape[1] == vocab:
        return logp
    cut = logp[:, :vocab]
    top = cut.max(axis=1, keepdims=True)
    return cut - (top + np.log(np.exp(cut - top).sum(axis=1, keepdims=True)))


def compare(generator: ScoreResult, scorer: ScoreResult) -> PairScore:
    """Top-1 agreement and KL(generator || scorer) of two scores of the same completion.

    Both must come from the same tokenizer (equal fingerprints) and encode the completion to
    the same ids; when one engine's context window cut the completion shorter, the common
    prefix is compared. Vocabularies padded to different sizes are compared on the shared
    ids (renormalised). Raises ValueError when the tokens differ.
    """
    if generator.tokenizer != scorer.tokenizer:
        raise ValueError("the scores come from different tokenizers: compare the texts instead")
    n = min(len(generator.token_ids), len(scorer.token_ids))
    ids = np.asarray(generator.token_ids[:n], dtype=np.int64)
    if tuple(scorer.token_ids[:n]) != tuple(generator.token_ids[:n]):
        raise ValueError("the two scores are of different tokens")
    if n == 0:
        return PairScore(0, 0, 0.0)
    vocab = min(generator.vocab_size, scorer.vocab_size)
    p_log = _normalised(logprob_matrix(generator)[:n], vocab)
    q_log = _normalised(logprob_matrix(scorer)[:n], vocab)
    agree = int(np.count_nonzero(q_log.argmax(axis=1) == ids))
    p = np.exp(p_log)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(p > 0, p * (p_log - q_log), 0.0)
    kl = float(np.maximum(terms.sum(axis=1), 0.0).sum())
    return PairScore(n, agree, kl)


def text_similarity(a: str, b: str) -> float:
    """difflib's ratio of two texts, in [0, 1] (1: equal; two empty texts are equal)."""
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio()


def sampled(request_id: str, share: float | None) -> bool:
    """Whether a request id falls in a ``share`` sample (a hash: every process agrees)."""
    if share is None or share <= 0:
        return False
    if share >= 1:
        return True
    digest = hashlib.sha256(f"quality\x1f{request_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE < share


# --- the service ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Job:
    request_id: str
    experiment_id: int
    phase: int
    variant: str
    unit_id: str
    comparison: str
    generator: str
    scorer: str
    prompt: str
    completion: str
    max_new_tokens: int
    stop: tuple[str, ...]
    completion_ids: tuple[int, ...] = ()  # the tokens as generated (empty: encode the text)

    def row(self, status: str, **values: Any) -> dict[str, Any]:
        return {"request_id": self.request_id, "experiment_id": self.experiment_id, "phase": self.phase,
                "variant": self.variant, "unit_id": self.unit_id, "comparison": self.comparison,
                "generator": self.generator, "scorer": self.scorer, "status": status,
                "method": None, "error_code": None, "tokens": None, "agree": None, "kl_sum": None,
                "similarity": None, "created_at": datetime.now(timezone.utc), **values}


class _Failed(Exception):
    def __init__(self, code: str) -> None:
        super().__init__(code)
        self.code = code


class QualityService:
    """Scores sampled completions off the request path (see the module doc). ``queue_size``
    jobs wait at most; ``workers`` threads run them; each dispatch waits ``timeout_s``."""

    def __init__(self, dispatcher: Any, db: Database, timeout_s: float = 30.0, *,
                 queue_size: int = 1024, workers: int = 1, max_pending_rows: int = 10_000) -> None:
        self.dispatcher, self.db, self.timeout_s = dispatcher, db, timeout_s
        self.workers, self.max_pending_rows = max(1, workers), max_pending_rows
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=max(1, queue_size))
        self._fingerprints: dict[str, str] = {}
        self._cond = threading.Condition()
        self._busy = 0  # accepted jobs not finished + rows not committed
        self._rows: list[dict[str, Any]] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self.lost_rows = 0  # rows the database refused or the bound on pending rows cut

    # --- QualityHook -------------------------------------------------------------------

    def served(self, row: Mapping[str, Any], params: Any, result: Mapping[str, Any], config: ExperimentConfig,
               assignment: Assignment) -> None:
        if not row.get("in_experiment") or not sampled(row["request_id"], config.quality_sample):
            return
        variant = _variant(config, row["variant"])
        if variant is None:
            return
        if variant.is_control:
            for t in config.variants:
                if not t.is_control and not t.shadow and t.engine != variant.engine:
                    self._offer(_job(row, params, result, t.key, TREATMENT_VS_CONTROL, variant.engine, t.engine))
        if variant.quality_reference and variant.quality_reference != variant.engine:
            self._offer(_job(row, params, result, variant.key, REFERENCE, variant.engine, variant.quality_reference))

    def shadowed(self, row: Mapping[str, Any], params: Any, control: Mapping[str, Any] | None,
                 copy: Mapping[str, Any] | None, config: ExperimentConfig, assignment: Assignment) -> None:
        if row.get("status") != "ok" or not row.get("in_experiment"):
            return
        share = config.quality_sample if config.quality_sample is not None else 1.0
        if not sampled(row["request_id"], share):
            return
        shadow = next((v for v in config.variants if v.shadow and v.engine == row["engine"]), None)
        if shadow is None:
            return
        if control is not None and shadow.engine != assignment.engine:
            self._offer(_job(row, params, control, shadow.key, TREATMENT_VS_CONTROL,
                             assignment.engine, shadow.engine))
        if copy is not None and shadow.quality_reference and shadow.quality_reference != shadow.engine:
            self._offer(_job(row, params, copy, shadow.key, REFERENCE, shadow.engine,
                             shadow.quality_reference))

    # --- queue and workers ---------------------------------------------------------------

    def _offer(self, job: _Job) -> None:
        with self._cond:
            if self._closed:
                return
            self._start()
            self._busy += 1
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            self._store(job.row("dropped", error_code="queue_full"))
            self._done()

    def _start(self) -> None:
        """Start the threads on first use (caller holds the condition)."""
        if self._threads:
            return
        for i in range(self.workers):
            t = threading.Thread(target=self._work, name=f"quality-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        writer = threading.Thread(target=self._write_loop, name="quality-writer", daemon=True)
        writer.start()
        self._threads.append(writer)

    def _done(self) -> None:
        with self._cond:
            self._busy -= 1
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                if self._closed:
                    row = job.row("dropped", error_code="shutting_down")
                else:
                    row = self._run(job)
            except _Failed as exc:
                row = job.row("failed", error_code=exc.code)
            except Exception as exc:  # noqa: BLE001 - a scoring bug fails its job only
                log.exception("quality job for request %s failed", job.request_id)
                row = job.row("failed", error_code=type(exc).__name__[:50])
            self._store(row)
            self._done()

    def _run(self, job: _Job) -> dict[str, Any]:
        known_g, known_s = self._fingerprints.get(job.generator), self._fingerprints.get(job.scorer)
        if known_g is not None and known_s is not None and known_g != known_s:
            return self._by_text(job)
        payload = {"task": "score", "prompt": job.prompt, "completion": job.completion}
        # the generator scores its own tokens as generated (decoding, then encoding the text again,
        # can split it differently: then it would score tokens it never chose)
        own = {**payload, "completion_ids": list(job.completion_ids)} if job.completion_ids else payload
        gen = ScoreResult.from_dict(self._wait(self._submit(job.generator, own), job.generator))
        self._fingerprints[job.generator] = gen.tokenizer
        if known_s is None:  # learn the scorer's tokenizer once (its own encoding of the texts)
            known_s = ScoreResult.from_dict(self._wait(self._submit(job.scorer, payload), job.scorer)).tokenizer
            self._fingerprints[job.scorer] = known_s
        if known_s != gen.tokenizer:
            return self._by_text(job)
        # the scorer scores the generator's own encoding: the same tokens, whatever its tokenizer's
        # normalisation, when both map ids to the same strings (equal fingerprints)
        same_ids = {**payload, "prompt_ids": list(gen.prompt_ids), "completion_ids": list(gen.token_ids)}
        sco = ScoreResult.from_dict(self._wait(self._submit(job.scorer, same_ids), job.scorer))
        self._fingerprints[job.scorer] = sco.tokenizer
        if gen.tokenizer != sco.tokenizer:
            return self._by_text(job)
        pair = compare(gen, sco)
        return job.row("ok", method="logprobs", tokens=pair.tokens, agree=pair.agree, kl_sum=pair.kl_sum)

    def _by_text(self, job: _Job) -> dict[str, Any]:
        payload = {"prompt": job.prompt, "max_new_tokens": job.max_new_tokens, "temperature": 0.0,
                   "top_p": 1.0, "seed": None, "stop": list(job.stop)}
        result = self._wait(self._submit(job.scorer, payload), job.scorer)
        return job.row("ok", method="text", similarity=text_similarity(job.completion, result["text"]))

    def _submit(self, engine: str, payload: dict[str, Any]) -> Future:
        try:
            return self.dispatcher.submit(engine, str(uuid.uuid4()), payload, self.timeout_s)
        except ABTestError as exc:  # queue full, broker down: this job fails, nothing else
            raise _Failed(exc.code) from None

    def _wait(self, future: Future, engine: str) -> dict[str, Any]:
        try:
            reply = future.result(timeout=self.timeout_s)
        except FutureTimeout:
            future.cancel()
            raise _Failed("timeout") from None
        if not reply.get("ok"):
            code = (reply.get("error") or {}).get("code", "engine_error")
            log.info("quality: engine %s could not score: %s", engine, code)
            raise _Failed(code)
        return reply["result"]

    # --- storage ------------------------------------------------------------------------

    def _store(self, row: dict[str, Any]) -> None:
        with self._cond:
            if len(self._rows) >= self.max_pending_rows:
                self.lost_rows += 1
                return
            self._rows.append(row)
            self._busy += 1
            self._cond.notify_all()

    def _write_loop(self) -> None:
        while True:
            with self._cond:
                while not self._rows and not (self._closed and self._busy == 0):
                    self._cond.wait()
                rows, self._rows = self._rows, []
            if not rows:
                return
            try:
                with self.db.transaction() as session:
                    session.execute(insert(QualityScore), rows)
            except Exception as exc:  # noqa: BLE001 - quality rows never affect anything else
                log.error("quality: %d score rows not stored: %s", len(rows), type(exc).__name__)
                with self._cond:
                    self.lost_rows += len(rows)
            with self._cond:
                self._busy -= len(rows)
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every accepted job has run and its row is committed; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._busy == 0, timeout)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking jobs; queued jobs are recorded as dropped; the rows are flushed."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            workers = [t for t in self._threads if t.name != "quality-writer"]
            self._cond.notify_all()
        for _ in workers:
            self._jobs.put(None)
        for t in self._threads:
            t.join(timeout)


def _variant(config: ExperimentConfig, key: str | None) -> VariantConfig | None:
    return next((v for v in config.variants if v.key == key), None)


def _job(row: Mapping[str, Any], params: Any, result: Mapping[str, Any], variant: str, comparison: str,
         generator: str, scorer: str) -> _Job:
    return _Job(str(row["request_id"]), int(row["experiment_id"]), int(row["phase"]), variant,
                str(row["unit_id"]), comparison, generator, scorer, params.prompt, str(result["text"]),
                int(params.max_new_tokens), tuple(params.stop),
                tuple(int(t) for t in result.get("token_ids") or ()))
