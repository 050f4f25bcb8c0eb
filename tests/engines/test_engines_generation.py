import pytest
import torch

from engines import GenerationRequest, GenerationResult
from engines.types import EngineError, InvalidRequest, PromptTooLong

PROMPTS = [
    "def __init__(self, name):\n    self.name = name\n    return",
    "import os",
    "class Foo(object):\n    \"\"\"A small class used to test the engines and the tokenizer together.\"\"\"\n",
]
NAMES = ["v1-fp32", "v2-fp32", "v2-int4"]


def _hf_argmax_tokens(engine, ids, n):
    """Reference greedy decoding: plain HF forward (no cache) and argmax at every step."""
    out = []
    with torch.inference_mode():
        for _ in range(n):
            logits = engine.loaded.model(input_ids=torch.tensor([ids + out])).logits[0, -1]
            t = int(logits.argmax())
            out.append(t)
            if t in engine.eos_ids:
                break
    return out


def _hf_greedy(engine, prompt, n):
    return _hf_argmax_tokens(engine, engine.encode(prompt), n)


@pytest.mark.parametrize("name", NAMES)
def test_greedy_equals_hf_forward_argmax(tiny_engines, one_int4_kernel, name):
    eng = tiny_engines[name]
    n = 24  # prompts + generated tokens exceed the tiny sliding window (16)
    res = eng.generate([GenerationRequest(p, max_new_tokens=n) for p in PROMPTS])
    for p, r in zip(PROMPTS, res):
        assert isinstance(r, GenerationResult), r
        ref = _hf_greedy(eng, p, n)
        ref_text = eng.tokenizer.decode([t for t in ref if t not in eng.eos_ids], skip_special_tokens=True)
        assert r.text == ref_text
        assert r.completion_tokens == len(ref)
        assert r.batch_size == len(PROMPTS)


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4"])
def test_batched_equals_single(tiny_engines, name):
    eng = tiny_engines[name]
    reqs = [GenerationRequest(p, max_new_tokens=12) for p in PROMPTS]
    batched = eng.generate(reqs)
    for req, b in zip(reqs, batched):
        (single,) = eng.generate([req])
        assert single.text == b.text and single.batch_size == 1


def test_seeded_sampling_reproducible(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    req = GenerationRequest("import os", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=123)
    a = eng.generate([req])[0]
    b = eng.generate([req, GenerationRequest("x = 1", max_new_tokens=5)])[0]  # other batch company
    c = eng.generate([GenerationRequest("import os", max_new_tokens=16, temperature=1.0, top_p=0.9, seed=124)])[0]
    greedy = eng.generate([GenerationRequest("import os", max_new_tokens=16)])[0]
    assert a.text == b.text
    assert a.text != c.text or a.text != greedy.text
    # tiny top_p degenerates to greedy
    d = eng.generate([GenerationRequest("import os", max_new_tokens=16, temperature=1.0, top_p=1e-6, seed=5)])[0]
    assert d.text == greedy.text


def test_stop_strings(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    full = eng.generate([GenerationRequest("import os", max_new_tokens=30)])[0]
    assert full.finish_reason == "length" and len(full.text) > 6
    stop = full.text[4:7]
    cut = full.text.find(stop)
    r = eng.generate([GenerationRequest("import os", max_new_tokens=30, stop=(stop, "\x00never"))])[0]
    assert r.finish_reason == "stop"
    assert r.text == full.text[:cut]
    assert r.completion_tokens < 30


def test_max_new_tokens_and_timings(tiny_engines):
    eng = tiny_engines["v2-int4"]
    res = eng.generate([GenerationRequest("import os", max_new_tokens=n) for n in (1, 5, 9)], queue_ms=[1.0, 2.0, 3.0])
    for n, r, q in zip((1, 5, 9), res, (1.0, 2.0, 3.0)):
        assert r.completion_tokens <= n
        if r.finish_reason == "length":
            assert r.completion_tokens == n
        assert r.queue_ms == q and r.ttft_ms > 0 and r.decode_ms >= 0
        assert r.total_ms >= r.queue_ms + r.ttft_ms - 1e-6
    assert res[0].decode_ms <= res[2].decode_ms


def test_too_long_prompt_rejected_alone(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    long_prompt = "x = 1\n" * 400
    assert eng.count_tokens(long_prompt) > eng.spec.context_window
    res = eng.generate([
        GenerationRequest("import os", max_new_tokens=4),
        GenerationRequest(long_prompt, max_new_tokens=4),
        GenerationRequest("def f():", max_new_tokens=4),
        GenerationRequest("import os", max_new_tokens=0),
    ])
    assert isinstance(res[0], GenerationResult) and isinstance(res[2], GenerationResult)
    assert isinstance(res[1], PromptTooLong) and res[1].code == "prompt_too_long"
    assert "context window" in str(res[1])
    assert isinstance(res[3], InvalidRequest)
    assert res[0].batch_size == 2


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4"])
def test_untokenizable_prompt_is_rejected_alone(tiny_engines, name):
    eng = tiny_engines[name]
    res = eng.generate([GenerationRequest("import os", max_new_tokens=3),
                        GenerationRequest("bad \ud800 text", max_new_tokens=3),
                        GenerationRequest("def f():", max_new_tokens=3)])
    assert isinstance(res[0], GenerationResult) and isinstance(res[2], GenerationResult)
    assert isinstance(res[1], InvalidRequest) and res[1].code == "invalid_request"
    assert "cannot be tokenized" in str(res[1])


def test_prompt_near_context_window_is_capped(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    ctx = eng.spec.context_window
    prompt = "a" * 4000
    ids = eng.encode(prompt)
    while len(ids) > ctx - 3:
        prompt = prompt[: int(len(prompt) * 0.9)]
        ids = eng.encode(prompt)
    r = eng.generate([GenerationRequest(prompt, max_new_tokens=50)])[0]
    assert isinstance(r, GenerationResult)
    assert r.prompt_tokens + r.completion_tokens <= ctx


def test_one_failure_does_not_fail_the_batch(tiny_engines, monkeypatch):
    eng = tiny_engines["v1-fp32"]
    orig = eng._run_batch

    def flaky(rows):
        if any(r.req.prompt == "boom" for r in rows):
            raise RuntimeError("kaboom")
        return orig(rows)

    monkeypatch.setattr(eng, "_run_batch", flaky)
    res = eng.generate([GenerationRequest("import os", max_new_tokens=3), GenerationRequest("boom", max_new_tokens=3),
                        GenerationRequest("def f", max_new_tokens=3)])
    assert isinstance(res[0], GenerationResult) and isinstance(res[2], GenerationResult)
    assert isinstance(res[1], EngineError) and "kaboom" in str(res[1])


def test_hybrid_lower_layers_use_sliding_window(tiny_engines):
    """Tokens further back than the window change no sliding-layer output, but do change the
    global layers above them."""
    from engines.testing import TINY_SLIDING_WINDOW as W

    eng = tiny_engines["v2-fp32"]
    runner = eng.runner
    windows = runner.windows
    n_sliding = sum(w is not None for w in windows)
    assert n_sliding == len(windows) // 2 and windows[0] == W and windows[-1] is None
    torch.manual_seed(0)
    a = torch.randint(1, 400, (1, 3 * W))
    b = a.clone()
    b[0, :5] = torch.randint(1, 400, (5,))  # differ only far outside the window of the last token
    assert not torch.equal(a, b)
    pos = torch.arange(a.shape[1])[None]
    with torch.inference_mode():
        _, ha = runner.forward(a, pos, 0, runner.new_cache(1, a.shape[1]), None, last_only=False, return_hidden=True)
        _, hb = runner.forward(b, pos, 0, runner.new_cache(1, a.shape[1]), None, last_only=False, return_hidden=True)
    # first layer (sliding): the last token's output is unchanged; positions inside the window of the change differ
    assert torch.allclose(ha[0][0, -1], hb[0][0, -1], atol=1e-6)
    assert not torch.allclose(ha[0][0, 5], hb[0][0, 5])
    # stacked sliding layers widen the receptive field to n_sliding * (W - 1): still outside
    assert (a.shape[1] - 1) - 4 > n_sliding * (W - 1)
    assert torch.allclose(ha[n_sliding - 1][0, -1], hb[n_sliding - 1][0, -1], atol=1e-5)
    # global layers see everything
    assert not torch.allclose(ha[-1][0, -1], hb[-1][0, -1], atol=1e-4)
    # a dense engine on the same checkpoint sees the change in its first layer
    from engines.decoder import DecoderRunner

    dense = DecoderRunner(eng.loaded, 512, "dense")
    with torch.inference_mode():
        _, da = dense.forward(a, pos, 0, dense.new_cache(1, a.shape[1]), None, last_only=False, return_hidden=True)
        _, db = dense.forward(b, pos, 0, dense.new_cache(1, a.shape[1]), None, last_only=False, return_hidden=True)
    assert not torch.allclose(da[0][0, -1], db[0][0, -1], atol=1e-6)


def test_hybrid_decode_matches_hf_beyond_window(tiny_engines):
    """Long prompt (> window) + decode: the sliced sliding-window decode path equals HF.

    On the FP32 hybrid engine, where both paths agree to ~1e-6: the tiny random INT4 model's
    logits have bf16-level near-ties that can flip a greedy choice between two exact paths
    (its kernel is checked against the dequantized reference in test_engines_quant)."""
    eng = tiny_engines["v2-fp32"]
    prompt = "def function_name(argument_one, argument_two):\n    return argument_one + argument_two\n" * 2
    assert eng.count_tokens(prompt) > 2 * eng.runner.windows[0]
    r = eng.generate([GenerationRequest(prompt, max_new_tokens=20)])[0]
    ref = _hf_greedy(eng, prompt, 20)
    assert r.text == eng.tokenizer.decode([t for t in ref if t not in eng.eos_ids], skip_special_tokens=True)


def test_count_tokens_and_empty_prompt(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    assert eng.count_tokens("import os") == len(eng.encode("import os")) > 1
    r = eng.generate([GenerationRequest("", max_new_tokens=3)])[0]  # BOS only
    assert isinstance(r, GenerationResult) and r.prompt_tokens == 1


def test_closed_engine_refuses(tiny_specs):
    from engines import load_engine
    from engines.types import EngineClosed

    eng = load_engine(tiny_specs["v1-fp32"])
    eng.close()
    with pytest.raises(EngineClosed):
        eng.generate([GenerationRequest("x")])


def test_large_batches_split_by_size_and_kv_budget(tiny_engines, monkeypatch):
    from dataclasses import replace

    eng = tiny_engines["v1-fp32"]
    reqs = [GenerationRequest(f"x = {i}", max_new_tokens=4) for i in range(6)]
    monkeypatch.setattr(eng, "spec", replace(eng.spec, max_batch_size=4, kv_budget_gb=1000.0))
    assert [r.batch_size for r in eng.generate(reqs)] == [4, 4, 4, 4, 2, 2]
    r = eng.runner
    per_seq = r.n_layers * 2 * r.n_kv * r.head_dim * 4 * (len(eng.encode("x = 1")) + 4)
    monkeypatch.setattr(eng, "spec", replace(eng.spec, max_batch_size=4, kv_budget_gb=per_seq * 2.5 / 2**30))
    assert [r.batch_size for r in eng.generate(reqs)] == [2, 2, 2, 2, 2, 2]
    with pytest.raises(ValueError, match="kv_budget_gb"):
        replace(eng.spec, kv_budget_gb=0)


def test_rope_helper_equals_rotate_half_formula():
    from engines.decoder import _rope, _rotate_half

    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 8)
    cos, sin = torch.randn(3, 8), torch.randn(3, 8)
    sin_signed = torch.cat((-sin[:, :4], sin[:, 4:]), -1)
    torch.testing.assert_close(_rope(x, cos, sin_signed), x * cos + _rotate_half(x) * sin)


def test_a_row_whose_caller_stopped_leaves_the_batch_at_the_next_step(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    long = GenerationRequest("def long(x):", max_new_tokens=64, stop=("<never>",))
    short = GenerationRequest("class A:", max_new_tokens=64, stop=("<never>",))
    alone = eng.generate([short])[0]
    checks = {"n": 0}

    def gone_after_three_steps():
        checks["n"] += 1
        return checks["n"] <= 3

    dropped, kept = eng.generate([long, short], alive=[gone_after_three_steps, lambda: True])
    assert dropped.finish_reason == "expired" and dropped.completion_tokens == 4  # 3 steps waited for, then gone
    assert checks["n"] == 4  # never asked again once it left
    assert (kept.text, kept.completion_tokens, kept.finish_reason) == (alone.text, alone.completion_tokens,
                                                                       alone.finish_reason)
