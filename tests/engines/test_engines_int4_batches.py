"""A prompt alone and inside batches of 7 and 32 on the tiny V2 INT4 engine: the same greedy
text and logits, on one int4 kernel at every row count and as served; and the engine on torch's
kernel against this package's."""

import pytest
import torch

from engines import int4
from engines.int4_layer import Int4Linear

needs_kernel = pytest.mark.skipif(not int4.kernel_available(),
                                  reason="the batched int4 kernel needs an AVX-512 CPU (falls back to aten)")
needs_amx = pytest.mark.skipif(not int4.amx_available(), reason="the AMX tile kernel needs a CPU with AMX")


def _record_logits(eng, monkeypatch):
    """Per request object: the logits its every sampled token was chosen from."""
    seen: dict[int, list[torch.Tensor]] = {}
    orig = eng.sample

    def sample(logits, rows):
        for j, r in enumerate(rows):
            seen.setdefault(id(r.req), []).append(logits[j].float().clone())
        return orig(logits, rows)

    monkeypatch.setattr(eng, "sample", sample)
    return seen


def _same_length_prompts(eng, prompt, n):
    """``n`` other prompts of exactly ``prompt``'s token count (a batch without padding)."""
    want = len(eng.encode(prompt))
    names = ["parse", "load", "read", "write", "split", "merge", "clean", "build", "check", "fetch", "store",
             "print", "count", "order", "close", "reset", "apply", "carry", "shift", "query", "match", "score"]
    args = ["path", "name", "text", "data", "item", "node", "line", "file", "rows", "keys", "self", "args"]
    pool = [f"def {f}({a}):\n    return" for f in names for a in args]
    pool += [f"class Item{i}:\n    x = {i}" + " y" * (i % 5) for i in range(400)]
    same = [p for p in pool if p != prompt and len(eng.encode(p)) == want][:n]
    assert len(same) == n, f"found {len(same)} prompts of {want} tokens"
    return same


def _alone_and_in_batches(eng, monkeypatch, padded=True):
    """The greedy tokens and per-token logits of one prompt alone, then in the middle of batches
    of 7 and 32 other prompts: of other lengths (padded: left padding) or of its own length."""
    from engines import GenerationRequest

    seen = _record_logits(eng, monkeypatch)
    prompt = "def parse(path):\n    return"
    others = ([f"class Item{i}:\n    x = {i}" + " y" * (i % 5) for i in range(31)] if padded
              else _same_length_prompts(eng, prompt, 31))
    runs = []
    for size in (1, 7, 32):
        req = GenerationRequest(prompt, max_new_tokens=12)
        batch = [GenerationRequest(p, max_new_tokens=12) for p in others[: size - 1]]
        batch.insert(size // 2, req)
        seen.clear()
        res = eng.generate(batch)[size // 2]
        runs.append((size, res, torch.stack(seen[id(req)])))
    _, alone, ref = runs[0]
    assert alone.completion_tokens == 12
    out = []
    for size, res, logits in runs[1:]:
        assert logits.shape == ref.shape
        diff = ((logits - ref).abs().max() / ref.abs().max()).item()
        out.append((size, res.token_ids == alone.token_ids, diff))
    return out


@needs_kernel
@pytest.mark.parametrize("amx_rows", [0, 1])  # one kernel at every row count: FMA or dot; AMX
def test_engine_prompt_alone_and_in_batches_of_7_and_32_one_kernel(tiny_engines, monkeypatch, amx_rows):
    if amx_rows and not int4.amx_available():
        pytest.skip("the AMX tile kernel needs a CPU with AMX")
    from engines.int4_layer import set_amx_rows

    eng = tiny_engines["v2-int4"]
    layers = [m for m in eng.loaded.model.modules() if isinstance(m, Int4Linear)]
    assert layers and all(m.kernel == "batched" for m in layers)
    set_amx_rows(eng.loaded.model, amx_rows)
    try:
        # batch-mates of the prompt's own length: every op sees the row as alone
        for size, same, diff in _alone_and_in_batches(eng, monkeypatch, padded=False):
            print(f"amx_rows={amx_rows} batch {size}, no padding: same greedy tokens {same}; "
                  f"logits max rel diff vs alone {diff:.2e}")
            # stated tolerance 1e-4 (measured: 0, bit-identical): each int4 kernel gives a row the
            # same bits whatever the batch
            assert same and diff < 1e-4, size
        # batch-mates of other lengths: left padding changes attention's reduction lengths
        # (masked keys), which moves its fp32 output at the 1e-7 level; where that flips one
        # bf16 rounding of a kernel's input, this tiny random model amplifies it (measured up to
        # 5.6e-3 on the dot kernel, 0 on the FMA kernel; the kernels' own outputs stay
        # bit-identical per row): the same greedy text, logits within 0.1, as across kernels
        for size, same, diff in _alone_and_in_batches(eng, monkeypatch, padded=True):
            print(f"amx_rows={amx_rows} batch {size}, left-padded: same greedy tokens {same}; "
                  f"logits max rel diff vs alone {diff:.2e}")
            assert same and diff < 0.1, size
    finally:
        set_amx_rows(eng.loaded.model, eng.spec.int4_amx_rows)


@needs_amx
def test_engine_prompt_alone_and_in_batches_of_7_and_32_as_served(tiny_engines, monkeypatch):
    """The default: decode steps of fewer than int4_amx_rows rows (a request alone) take the
    fp32-FMA kernel, bigger batches and prefills the AMX kernel, so across that threshold a row's
    logits move by the two kernels' rounding: the same greedy text, logits within 0.1 of the
    largest (this tiny random model amplifies bf16 rounding, as in the aten comparison below;
    measured 3.8e-2 here, and 2-4e-3 per matmul against the reference)."""
    eng = tiny_engines["v2-int4"]
    assert {m.amx_min_rows for m in eng.loaded.model.modules() if isinstance(m, Int4Linear)} == {4}
    for size, same, diff in _alone_and_in_batches(eng, monkeypatch):
        print(f"as served, batch {size}: same greedy tokens {same}; logits max rel diff vs alone {diff:.2e}")
        assert same and diff < 0.1, size


@needs_kernel
def test_engine_on_the_aten_kernel_agrees(tiny_specs, tiny_engines):
    """torch's kernel and this package's (amx rows 0: the fp32-FMA kernel, or the dot kernel on a
    CPU with AVX512-BF16) on the same tiny model. The AMX kernel's bf16 weights are checked per matmul above and,
    on the demo checkpoint, by the engines benchmark's top-1 agreement and KL against FP32."""
    import dataclasses

    from engines import load_engine
    from engines.int4_layer import set_amx_rows

    eng = tiny_engines["v2-int4"]
    old = load_engine(dataclasses.replace(tiny_specs["v2-int4"], int4_kernel="aten"))
    set_amx_rows(eng.loaded.model, 0)
    try:
        assert all(m.kernel == "aten" for m in old.loaded.model.modules() if isinstance(m, Int4Linear))
        ids = [0] + list(range(3, 60))
        a, b = eng.teacher_forced_logits(ids), old.teacher_forced_logits(ids)
        rel = ((a - b).abs().max() / b.abs().max()).item()
        agree = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        print(f"tiny int4 model, batched vs aten kernel: max rel {rel:.2e}, top-1 agreement {agree:.3f}")
        # as the kernel-vs-reference model test: a random tiny model amplifies bf16 rounding
        assert rel < 0.1 and agree >= 0.9
    finally:
        set_amx_rows(eng.loaded.model, eng.spec.int4_amx_rows)
        old.close()
