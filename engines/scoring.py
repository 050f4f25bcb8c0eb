"""Teacher-forced scoring: an engine's distribution over a given continuation (what a quality
reference computes), as a mixin of :class:`engines.runtime.Engine`, which supplies ``runner``,
``tokenizer``, ``eos_ids``, ``spec``, ``loaded``, ``device``, ``_validate``, ``lock`` and ``_closed``."""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch

from engines.types import EngineClosed, GenerationRequest, InvalidRequest, PromptTooLong, ScoreResult

__all__ = ["Scoring"]


class Scoring:
    def teacher_forced_logits(self, ids: Sequence[int]) -> torch.Tensor:
        """Logits [len(ids), vocab] for every position of one sequence (benchmarks, tests), on the
        engine's compute thread (:mod:`engines.compute`)."""
        return self.compute_thread.run(self._teacher_forced_logits, ids)

    @torch.inference_mode()
    def _teacher_forced_logits(self, ids: Sequence[int]) -> torch.Tensor:
        x = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        cache = self.runner.new_cache(1, x.shape[1])
        pos = torch.arange(x.shape[1], device=self.device)[None]
        return self.runner.forward(x, pos, 0, cache, None, last_only=False)[0].float()

    def _score_logprobs(self, ids: list[int], comp: list[int]) -> torch.Tensor:
        with self.lock:
            if self._closed:
                raise EngineClosed(f"engine {self.spec.name} is closed")
            logits = self._teacher_forced_logits(ids + comp)[len(ids) - 1:len(ids) - 1 + len(comp)]
        return torch.log_softmax(logits.float(), dim=-1).cpu().contiguous()

    # --- scoring a given completion (output quality) ---------------------------------------

    @property
    def tokenizer_fingerprint(self) -> str:
        """A hash of the tokenizer's vocabulary and special tokens: equal fingerprints mean
        that two engines encode every text to the same ids."""
        fp = getattr(self, "_tokenizer_fp", None)
        if fp is None:
            import hashlib

            tok = self.tokenizer
            blob = json.dumps({"vocab": sorted(tok.get_vocab().items(), key=lambda kv: kv[1]),
                               "bos": tok.bos_token_id, "eos": sorted(self.eos_ids)}, ensure_ascii=True)
            fp = hashlib.sha256(blob.encode()).hexdigest()[:16]
            self._tokenizer_fp = fp
        return fp

    def score(self, prompt: str, completion: str, *, prompt_ids: Sequence[int] | None = None,
              completion_ids: Sequence[int] | None = None) -> ScoreResult:
        """Score ``completion`` teacher-forced after ``prompt``, in one forward pass.

        The completion is encoded as this engine would have generated it after the prompt
        (the prompt's ids as ``generate`` encodes them, then the completion's, no special
        tokens) and cut to fit the context window (``truncated``). ``completion_ids`` (the
        tokens as generated: ``GenerationResult.token_ids``) and ``prompt_ids`` (another
        engine's encoding, for engines with the same vocabulary: see ``tokenizer_fingerprint``),
        when given, are scored instead of encoding the texts; the prompt is encoded when only
        ``completion_ids`` are given.
        The result holds, per completion position, the log-softmax over the vocabulary of the
        prediction of that token (float32). Raises :class:`InvalidRequest` /
        :class:`PromptTooLong` for what ``generate`` would refuse, :class:`EngineClosed` after
        :meth:`close`.
        """

        if not isinstance(prompt, str) or not isinstance(completion, str):
            raise InvalidRequest("prompt and completion must be strings")
        vocab = int(getattr(self.loaded.config, "vocab_size", 0) or 0)
        if prompt_ids is not None or completion_ids is not None:
            ids = (list(prompt_ids) if prompt_ids is not None
                   else self._validate(GenerationRequest(prompt=prompt, max_new_tokens=1)))
            comp = list(completion_ids or ())
            if not ids or not all(isinstance(t, int) and 0 <= t < vocab for t in ids + comp):
                raise InvalidRequest(f"token ids must be a non-empty prompt of integers in [0, {vocab})")
            if len(ids) >= self.spec.context_window:
                raise PromptTooLong(f"prompt is {len(ids)} tokens; engine {self.spec.name} has a context "
                                    f"window of {self.spec.context_window} tokens")
        else:
            ids = self._validate(GenerationRequest(prompt=prompt, max_new_tokens=1))
            try:
                comp = list(self.tokenizer(completion, add_special_tokens=False)["input_ids"]) if completion else []
            except Exception as e:  # noqa: BLE001 - the tokenizer's own exception types vary
                raise InvalidRequest(f"completion cannot be tokenized: {type(e).__name__}") from e
        room = self.spec.context_window - len(ids)
        truncated = len(comp) > room
        comp = comp[:room]
        fp = self.tokenizer_fingerprint
        if not comp:
            return ScoreResult((), b"", vocab, fp, len(ids), truncated, tuple(ids))
        logp = self.compute_thread.run(self._score_logprobs, ids, comp)
        return ScoreResult(tuple(int(t) for t in comp), logp.numpy().astype("<f4").tobytes(), int(logp.shape[-1]),
                           fp, len(ids), truncated, tuple(int(t) for t in ids))
