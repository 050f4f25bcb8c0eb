"""The generation core both schedulers share: a request's row, its next token, its end, its result.

The static batch (:meth:`engines.runtime.Engine.generate`) and continuous batching
(:mod:`engines.continuous`) differ in how rows share the KV cache and the decode steps; what a
row is and when it ends is here, once: :meth:`GenerationCore.start_row` checks a request and
seeds its sampler, :meth:`GenerationCore.sample` picks the next tokens, :meth:`GenerationCore.advance`
takes one and says whether the row has finished (caller gone, EOS, a stop string, its limit),
streaming its text, and :meth:`GenerationCore.result` builds the :class:`GenerationResult`.

A mixin of :class:`~engines.runtime.Engine`: it uses the engine's ``spec``, ``eos_ids``,
``tokenizer``, ``_validate`` and its seed generator ``_seed_rng``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from engines.streaming import TextDeltas, TextSink
from engines.types import GenerationRequest, GenerationResult

__all__ = ["Row", "GenerationCore"]


class Row:
    """Book-keeping of one request inside a running batch."""

    __slots__ = ("index", "req", "ids", "queue_ms", "limit", "gen", "stop", "text_len", "finish",
                 "t_done", "generator", "text", "greedy", "compute", "alive", "deltas")

    def __init__(self, index, req, ids, queue_ms, limit, generator, alive=None, deltas=None):
        self.index = index
        self.req = req
        self.ids = ids
        self.queue_ms = queue_ms
        self.limit = limit
        self.gen: list[int] = []
        self.finish: str | None = None
        self.t_done = 0.0
        self.generator = generator
        self.text: str | None = None
        self.greedy = req.temperature <= 0
        self.compute = 0.0  # seconds: this row's share of the batch's steps
        # () -> bool: whether the caller still waits; a row whose caller stopped leaves the
        # batch at the next decode step with finish "expired" (None: always waited for)
        self.alive = alive
        self.deltas: TextDeltas | None = deltas  # a streaming caller's text deltas (None: not streamed)


class GenerationCore:
    def start_row(self, index: int, req: GenerationRequest, queue_ms: float = 0.0,
                  alive: Callable[[], bool] | None = None, on_text: TextSink | None = None) -> Row:
        """A checked request's row: its prompt ids, its token limit (what the context window
        leaves), and its sampler seeded by ``req.seed`` (or the next engine seed). Raises the
        request's :class:`~engines.types.EngineError` (bad field, too long, untokenizable)."""
        ids = self._validate(req)
        limit = min(req.max_new_tokens, self.spec.context_window - len(ids))
        seed = req.seed if req.seed is not None else int(torch.randint(0, 2**62, (1,), generator=self._seed_rng))
        gen = torch.Generator().manual_seed(seed) if req.temperature > 0 else None
        return Row(index, req, ids, float(queue_ms), limit, gen, alive,
                   self.deltas(on_text, req) if on_text else None)

    def advance(self, row: Row, token: int) -> bool:
        """Append ``token`` to ``row``; True when the row has finished (``row.finish`` says why)."""
        row.gen.append(token)
        if row.alive is not None and not row.alive():
            row.finish = "expired"  # nobody waits for it: it leaves the batch now
        elif token in self.eos_ids:
            row.finish = "stop"
        elif row.req.stop and self._hit_stop(row):
            row.finish = "stop"
        elif len(row.gen) >= row.limit:
            row.finish = "length"
        if row.deltas is not None:
            self._stream(row)
        return row.finish is not None

    def result(self, row: Row, *, ttft_ms: float, decode_ms: float, total_ms: float,
               batch_size: int) -> GenerationResult:
        """A finished row's result (EOS left out of the text, a stop string cut off)."""
        return GenerationResult(
            text=self._final_text(row), prompt_tokens=len(row.ids), completion_tokens=len(row.gen),
            queue_ms=row.queue_ms, ttft_ms=ttft_ms, decode_ms=decode_ms, total_ms=total_ms,
            batch_size=batch_size, finish_reason=row.finish or "length", request_id=row.req.request_id,
            compute_ms=row.compute * 1e3, token_ids=tuple(row.gen),
        )

    def sample(self, logits: torch.Tensor, rows: list[Row]) -> torch.Tensor:
        """Next token per row: argmax for greedy rows; seeded temperature/top-p sampling else."""
        tok = logits.argmax(-1)
        sampled = [j for j, r in enumerate(rows) if not r.greedy]
        if not sampled:
            return tok
        for j in sampled:
            r = rows[j]
            lg = logits[j].float().cpu() / r.req.temperature
            probs = torch.softmax(lg, -1)
            if r.req.top_p < 1.0:
                sp, si = probs.sort(descending=True)
                cum = sp.cumsum(0)
                keep = (cum - sp) < r.req.top_p  # smallest prefix whose mass reaches top_p
                sp = sp * keep
                choice = si[torch.multinomial(sp, 1, generator=r.generator)]
            else:
                choice = torch.multinomial(probs, 1, generator=r.generator)
            tok[j] = choice.to(tok.device)[0]
        return tok

    def deltas(self, sink: TextSink, req: GenerationRequest) -> TextDeltas:
        return TextDeltas(sink, self._decode, req.stop)

    # ---------------------------------------------------------------------------------------

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _final_text(self, r: Row) -> str:
        if r.text is None:
            r.text = self._decode(r.gen[:-1] if r.gen and r.gen[-1] in self.eos_ids else r.gen)
        return r.text

    def _stream(self, r: Row) -> None:
        """Hand a streamed row its new text after a step; its final text once it has ended."""
        if r.finish is None:
            r.deltas.step(r.gen)
        elif r.finish != "expired":
            r.deltas.finish(self._final_text(r))

    def _hit_stop(self, r: Row) -> bool:
        text = self._decode(r.gen)
        cut = -1
        for s in r.req.stop:
            i = text.find(s)
            if i >= 0 and (cut < 0 or i < cut):
                cut = i
        if cut >= 0:
            r.text = text[:cut]
            return True
        return False
