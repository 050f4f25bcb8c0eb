"""Engine.score against the teacher-forced logits it builds on, and the score task's transport."""

from __future__ import annotations

import numpy as np
import pytest

from abtest.services.quality import compare, logprob_matrix
from engines.types import InvalidRequest, PromptTooLong, ScoreResult

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4", "v2-fp32"])
def test_score_is_the_log_softmax_of_the_teacher_forced_logits(quality_engines, name) -> None:
    engine = quality_engines[name]
    prompt, completion = "def fibonacci(n):", "\n    return n if n < 2 else fib(n - 1)"
    result = engine.score(prompt, completion)
    prompt_ids = engine.encode(prompt)
    ids = engine.tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert result.token_ids == tuple(ids) and result.prompt_tokens == len(prompt_ids)
    logits = engine.teacher_forced_logits(prompt_ids + ids)
    expected = torch.log_softmax(logits, dim=-1)[len(prompt_ids) - 1:len(prompt_ids) - 1 + len(ids)].numpy()
    assert np.allclose(logprob_matrix(result), expected, atol=1e-5)
    assert np.allclose(np.exp(logprob_matrix(result)).sum(axis=1), 1.0, atol=1e-4)
    assert result.tokenizer == engine.tokenizer_fingerprint and not result.truncated


def test_same_tokenizer_same_fingerprint_and_self_comparison_is_zero_kl(quality_engines) -> None:
    fps = {e.tokenizer_fingerprint for e in quality_engines.values()}
    assert len(fps) == 1  # the tiny engines share their tokenizer
    s = quality_engines["v2-fp32"].score("import os\n", "import sys\n")
    pair = compare(s, s)
    assert pair.tokens == len(s.token_ids) > 0 and pair.kl_sum == 0.0


def test_a_long_completion_is_cut_to_the_context_window(quality_engines) -> None:
    engine = quality_engines["v1-fp32"]  # context window 256 tokens
    result = engine.score("x = 1", "y = 2\n" * 400)
    assert result.truncated and result.prompt_tokens + len(result.token_ids) == engine.spec.context_window
    assert len(result.logprobs) == len(result.token_ids) * result.vocab_size * 4


def test_bad_inputs_are_engine_errors(quality_engines) -> None:
    engine = quality_engines["v1-fp32"]
    with pytest.raises(PromptTooLong):
        engine.score("word " * 2000, "x")
    with pytest.raises(InvalidRequest, match="prompt"):
        engine.score("\ud800", "x")  # a lone surrogate: no tokenizer takes it
    with pytest.raises(InvalidRequest, match="completion"):
        engine.score("x = 1", "\ud800")
    empty = engine.score("x = 1", "")
    assert empty.token_ids == () and empty.logprobs == b""


def test_score_task_through_the_runner_in_process(quality_specs, quality_engines) -> None:
    from workers.host import EngineHost
    from workers.inprocess import InProcessDispatcher

    host = EngineHost({"v2-int4": quality_specs["v2-int4"], "broken": quality_specs["v2-int4"].__class__(
        **{**quality_specs["v2-int4"].to_dict(), "name": "broken", "checkpoint": "/nonexistent/ckpt"})})
    dispatcher = InProcessDispatcher(host)
    try:
        payload = {"task": "score", "prompt": "class Queue:", "completion": " pass"}
        reply = dispatcher.submit("v2-int4", "r-1", payload, 60).result(60)
        assert reply["ok"], reply
        direct = quality_engines["v2-int4"].score("class Queue:", " pass")
        got = ScoreResult.from_dict(reply["result"])
        assert got.token_ids == direct.token_ids
        assert np.allclose(logprob_matrix(got), logprob_matrix(direct), atol=1e-5)
        failed = dispatcher.submit("broken", "r-2", payload, 60).result(60)
        assert failed["ok"] is False and failed["error"]["code"] == "engine_unavailable"
        refused = dispatcher.submit("v2-int4", "r-3", {**payload, "completion": "\ud800"}, 60).result(60)
        assert refused["ok"] is False and refused["error"]["code"] == "invalid_request"
        # the engine still generates after all of that
        ok = dispatcher.submit("v2-int4", "r-4", {"prompt": "x = 1", "max_new_tokens": 3}, 60).result(60)
        assert ok["ok"] and ok["result"]["completion_tokens"] >= 1
    finally:
        dispatcher.close()


def test_scoring_another_engines_token_ids_scores_exactly_those(quality_engines) -> None:
    v1, v2 = quality_engines["v1-fp32"], quality_engines["v2-int4"]
    own = v1.score("import os\n", "import sys\nprint(sys.argv)")
    other = v2.score("import os\n", "ignored", prompt_ids=own.prompt_ids, completion_ids=own.token_ids)
    assert (other.prompt_ids, other.token_ids) == (own.prompt_ids, own.token_ids)
    logits = v2.teacher_forced_logits(list(own.prompt_ids) + list(own.token_ids))
    n = len(own.prompt_ids)
    expected = torch.log_softmax(logits, dim=-1)[n - 1:n - 1 + len(own.token_ids)].numpy()
    assert np.allclose(logprob_matrix(other), expected, atol=1e-5)
    with pytest.raises(InvalidRequest, match="token ids"):
        v2.score("x", "y", prompt_ids=[10**9], completion_ids=[1])


def test_a_greedy_completion_scored_on_its_own_tokens_agrees_with_itself(quality_engines) -> None:
    """Scoring the tokens as generated: an engine agrees with its own greedy choices everywhere
    and has zero KL to itself. Re-encoding the decoded text instead can split it differently
    (the tiny models' text does not even round-trip), so it scores tokens never chosen."""
    from engines.int4_layer import set_amx_rows

    eng = quality_engines["v2-int4"]
    # the fp32-FMA int4 kernel for the one-row decode steps and the many-row scoring pass alike
    # (the kernel of CPUs without AMX). As served, the scoring pass takes the AMX kernel, whose
    # rounding differs; this random tiny model has near-ties that such differences (and, with
    # AMX everywhere, decode vs prefill attention order) turn into another argmax: 7 of 8 here
    set_amx_rows(eng.loaded.model, 0)
    try:
        _own_tokens_agree(eng)
    finally:
        set_amx_rows(eng.loaded.model, eng.spec.int4_amx_rows)


def _own_tokens_agree(eng) -> None:
    from abtest.services.quality import compare
    from engines.types import GenerationRequest

    retokenized_agree = retokenized_total = 0
    for prompt in ("def fibonacci(n):", "import os\n", "class Queue:"):
        [result] = eng.generate([GenerationRequest(prompt=prompt, max_new_tokens=8)])
        assert len(result.token_ids) == result.completion_tokens
        own = eng.score(prompt, result.text, completion_ids=result.token_ids)
        assert own.token_ids == result.token_ids
        pair = compare(own, own)
        assert pair.agree == pair.tokens == len(result.token_ids) and pair.kl_sum == pytest.approx(0.0, abs=1e-6)
        text_only = eng.score(prompt, result.text)
        retokenized_agree += compare(text_only, text_only).agree
        retokenized_total += compare(text_only, text_only).tokens
    assert retokenized_agree < retokenized_total  # what the tokens as generated avoid
