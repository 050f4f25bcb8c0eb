"""Engine benchmark: prints ONE JSON object on stdout (progress goes to stderr).

    python -m benchmarks.engines [--quick] [--root DIR] [--threads 2]

On the demo checkpoints (built first when missing): per engine (V1 FP32 dense, V2 FP32 hybrid =
the V2 checkpoint unquantized, V2 INT4 hybrid) weight bytes, load time, prefill and decode
tokens/s at batch 1/8/32, request latency p50/p99; the plain transformers ``generate`` baseline
on V1; INT4 vs FP32 on the same V2 checkpoint (speed, bytes, teacher-forced top-1 agreement and
mean KL on held-out text); dynamic batching with 16 concurrent requests vs batch-1 sequential.
Speed ratios come from interleaved runs in the same process.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from pathlib import Path

from engines import tune_openmp

tune_openmp()  # before torch is imported (main imports it)


def _log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _pct(xs, q):
    xs = sorted(xs)
    if not xs:
        return None
    k = (len(xs) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def _prompts(tokenizer_engine, n: int, approx_tokens: int, texts: list[str]) -> list[str]:
    """n distinct prompts of about approx_tokens tokens, cut from held-out text."""
    out = []
    i = 0
    src = "\n".join(texts)
    step = max(200, len(src) // (n + 1))
    while len(out) < n:
        start = (i * step) % max(1, len(src) - 8 * approx_tokens)
        chunk = src[start:start + 6 * approx_tokens]
        ids = tokenizer_engine.encode(chunk)[1:approx_tokens]
        out.append(tokenizer_engine.tokenizer.decode(ids))
        i += 1
    return out


def _decode_rate(engine, prompts, new_tokens: int) -> dict:
    from engines import GenerationRequest

    reqs = [GenerationRequest(p, max_new_tokens=new_tokens) for p in prompts]
    t0 = time.perf_counter()
    res = engine.generate(reqs)
    wall = time.perf_counter() - t0
    bad = [r for r in res if isinstance(r, Exception)]
    if bad:
        raise bad[0]
    toks = sum(r.completion_tokens - 1 for r in res)
    dec = max(r.decode_ms for r in res) / 1e3
    return {"decode_tok_s": toks / dec if dec > 0 else None, "ttft_ms": res[0].ttft_ms, "wall_s": wall,
            "completion_tokens": sum(r.completion_tokens for r in res)}


def bench_engine(engine, prompts, *, quick: bool, prefill_tokens: int) -> dict:
    from engines import GenerationRequest

    out: dict = {
        "spec": {k: v for k, v in engine.spec.to_dict().items() if k not in ("description",)},
        "weight_bytes": engine.weight_bytes(),
        "linear_weight_bytes": engine.loaded.linear_weight_bytes(),
        "load_s": round(engine.load_seconds, 3),
    }
    # prefill: one long prompt, batch 1, one new token
    long_prompt = _prompts(engine, 1, prefill_tokens, [" ".join(prompts) * 4])[0]
    engine.generate([GenerationRequest(prompts[0], max_new_tokens=2)])  # warm-up
    pf = []
    for _ in range(2 if quick else 3):
        r = engine.generate([GenerationRequest(long_prompt, max_new_tokens=1)])[0]
        pf.append(r.prompt_tokens / (r.ttft_ms / 1e3))
    out["prefill_tokens"] = r.prompt_tokens
    out["prefill_tok_s"] = round(max(pf), 1)
    new = 16 if quick else 64
    out["decode_new_tokens"] = new
    for b in (1, 8, 32):
        reps = 1 if (quick or b > 1) else 2
        rates = [_decode_rate(engine, prompts[:b], new)["decode_tok_s"] for _ in range(reps)]
        out[f"decode_tok_s_b{b}"] = round(max(rates), 1)
    # request latency: sequential batch-1 requests
    lat = []
    for p in prompts[: (4 if quick else 12)]:
        r = engine.generate([GenerationRequest(p, max_new_tokens=new)])[0]
        lat.append(r.total_ms)
    out["latency_ms_b1"] = {"p50": round(_pct(lat, 0.5), 1), "p99": round(_pct(lat, 0.99), 1), "n": len(lat),
                            "new_tokens": new}
    return out


def hf_generate_baseline(engine, prompt: str, new_tokens: int, rounds: int) -> dict:
    """Plain transformers ``generate`` (greedy, HF's own cache) on the same model object,
    interleaved round by round with the engine's own loop (best round of each reported)."""
    import torch

    from engines import GenerationRequest

    model = engine.loaded.model
    ids = torch.tensor([engine.encode(prompt)])
    kw = dict(do_sample=False, pad_token_id=engine.pad_id)
    hf, ours = [], []
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=2, min_new_tokens=2, **kw)
        for _ in range(rounds):
            t0 = time.perf_counter()
            model.generate(ids, max_new_tokens=1, min_new_tokens=1, **kw)
            t1 = time.perf_counter()
            model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **kw)
            t2 = time.perf_counter()
            hf.append((new_tokens - 1) / max(1e-9, (t2 - t1) - (t1 - t0)))
            r = engine.generate([GenerationRequest(prompt, max_new_tokens=new_tokens)])[0]
            ours.append((r.completion_tokens - 1) / (r.decode_ms / 1e3))
    return {"decode_tok_s_b1": round(max(hf), 1), "ours_decode_tok_s_b1": round(max(ours), 1),
            "ours_over_hf": round(max(ours) / max(hf), 2),
            "ours_over_hf_median": round(statistics.median(ours) / statistics.median(hf), 2),
            "new_tokens": new_tokens, "rounds": rounds}


def quality(fp, q, texts: list[str], chunks: int, seq: int) -> dict:
    """Teacher-forced INT4 vs FP32 on held-out text: top-1 agreement, mean KL(fp32 || int4)."""
    import torch

    ids: list[int] = []
    for t in texts:
        ids.extend(fp.encode(t))
    agree = n = 0
    kl_sum = 0.0
    nll_fp = nll_q = 0.0
    for c in range(chunks):
        seg = ids[c * seq:(c + 1) * seq + 1]
        if len(seg) < seq + 1:
            break
        x, y = seg[:-1], torch.tensor(seg[1:])
        a = fp.teacher_forced_logits(x).float()
        b = q.teacher_forced_logits(x).float()
        la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
        kl_sum += float((la.exp() * (la - lb)).sum(-1).sum())
        agree += int((a.argmax(-1) == b.argmax(-1)).sum())
        nll_fp += float(-la.gather(1, y[:, None]).sum())
        nll_q += float(-lb.gather(1, y[:, None]).sum())
        n += len(x)
    import math

    return {
        "tokens": n,
        "top1_agreement": round(agree / n, 4),
        "mean_kl": float(f"{kl_sum / n:.3e}"),
        "ppl_fp32": round(math.exp(nll_fp / n), 2),
        "ppl_int4": round(math.exp(nll_q / n), 2),
    }


def interleaved_speed(a, b, prompt: str, new_tokens: int, rounds: int) -> dict:
    """A and B alternately, same prompt. The machine is shared: besides medians, report the
    best round of each (the least disturbed), whose ratio is the one compared to targets."""
    ra, rb = [], []
    for _ in range(rounds):
        ra.append(_decode_rate(a, [prompt], new_tokens)["decode_tok_s"])
        rb.append(_decode_rate(b, [prompt], new_tokens)["decode_tok_s"])
    ma, mb = statistics.median(ra), statistics.median(rb)
    return {"a_tok_s": round(max(ra), 1), "b_tok_s": round(max(rb), 1),
            "ratio_b_over_a": round(max(rb) / max(ra), 3),
            "a_tok_s_median": round(ma, 1), "b_tok_s_median": round(mb, 1),
            "ratio_median": round(mb / ma, 3), "rounds": rounds}


def dynamic_batching(engine, prompts, new_tokens: int, concurrent: int) -> dict:
    from engines import BatchingScheduler, GenerationRequest

    # batch-1 sequential baseline
    t0 = time.perf_counter()
    seq_tokens = 0
    for p in prompts[:concurrent]:
        seq_tokens += engine.generate([GenerationRequest(p, max_new_tokens=new_tokens)])[0].completion_tokens
    seq_s = time.perf_counter() - t0
    sched = BatchingScheduler(engine, max_batch_size=engine.spec.max_batch_size, max_wait_ms=engine.spec.max_wait_ms)
    results = [None] * concurrent
    barrier = threading.Barrier(concurrent)

    def client(i):
        barrier.wait()
        results[i] = sched.submit(GenerationRequest(prompts[i], max_new_tokens=new_tokens)).result(600)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrent)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    conc_s = time.perf_counter() - t0
    sched.close()
    toks = sum(r.completion_tokens for r in results)
    q = [r.queue_ms for r in results]
    batch_ms = max(r.total_ms - r.queue_ms for r in results)
    return {
        "concurrent": concurrent,
        "new_tokens": new_tokens,
        "sequential_tok_s": round(seq_tokens / seq_s, 1),
        "concurrent_tok_s": round(toks / conc_s, 1),
        "speedup": round((toks / conc_s) / (seq_tokens / seq_s), 2),
        "batch_sizes": list(sched.batch_sizes),
        "queue_ms_p50": round(_pct(q, 0.5), 1),
        "queue_ms_p99": round(_pct(q, 0.99), 1),
        "max_wait_ms": engine.spec.max_wait_ms,
        "batch_time_ms": round(batch_ms, 1),
        "latency_ms_p50": round(_pct([r.total_ms for r in results], 0.5), 1),
        "latency_ms_p99": round(_pct([r.total_ms for r in results], 0.99), 1),
    }


def staggered_arrivals(engine, prompts, continuous: bool, n: int = 16, gap_ms: float = 20.0,
                       max_new: int = 48) -> dict:
    """n requests arriving gap_ms apart with mixed lengths (max_new/6 .. max_new tokens)."""
    from engines import BatchingScheduler, ContinuousBatchingScheduler, GenerationRequest

    cls = ContinuousBatchingScheduler if continuous else BatchingScheduler
    sched = cls(engine, max_batch_size=32, max_wait_ms=engine.spec.max_wait_ms)
    lens = [max(2, max_new * (1 + (i * 5) % 6) // 6) for i in range(n)]
    t0 = time.perf_counter()
    futs = []
    for i in range(n):
        futs.append(sched.submit(GenerationRequest(prompts[i % len(prompts)], max_new_tokens=lens[i])))
        time.sleep(gap_ms / 1e3)
    res = [f.result(600) for f in futs]
    wall = time.perf_counter() - t0
    sched.close()
    lat = [r.total_ms for r in res]
    return {
        "scheduler": "continuous" if continuous else "static",
        "requests": n, "gap_ms": gap_ms, "tokens": sum(r.completion_tokens for r in res),
        "tok_s": round(sum(r.completion_tokens for r in res) / wall, 1),
        "latency_ms_mean": round(sum(lat) / n, 1),
        "latency_ms_p50": round(_pct(lat, 0.5), 1), "latency_ms_p99": round(_pct(lat, 0.99), 1),
        "ttft_ms_p50": round(_pct([r.queue_ms + r.ttft_ms for r in res], 0.5), 1),
    }


def checkpoint_root(root: str | None = None) -> Path:
    """The demo checkpoint root, absolute, resolved once at start-up: ``--root``, else
    ``$ABTEST_CHECKPOINT_DIR``, else ``var/checkpoints`` under the working directory (where
    ``abtest engines build-demo`` and ``make demo`` put them when run from the repository root)."""
    from engines.spec import CHECKPOINT_DIR_ENV, default_checkpoint_root

    return default_checkpoint_root(root or os.environ.get(CHECKPOINT_DIR_ENV))


def parse_args(argv=None) -> argparse.Namespace:
    """Arguments, checked before anything is loaded: ``--device`` must exist on this machine."""
    from engines.device import DeviceError, check_device

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (under 2 minutes)")
    ap.add_argument("--root", default=None, help="checkpoint root (default $ABTEST_CHECKPOINT_DIR or var/checkpoints)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--int4-kernel", default="auto", choices=("auto", "batched", "aten"),
                    help="V2 INT4's CPU matmul (default auto: the batched kernel where the CPU has AVX-512)")
    args = ap.parse_args(argv)
    try:
        check_device(args.device)
    except DeviceError as e:
        ap.error(f"--device: {e}")
    args.root = checkpoint_root(args.root)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from dataclasses import replace

    from engines import compute, load_engine
    from engines.demo import build_demo, heldout_texts
    from engines.spec import EngineSpec, builtin_specs

    t_start = time.perf_counter()
    root = args.root
    if not all((root / d / "config.json").is_file() for d in ("v1-fp32", "v2-fp32", "v2-int4")):
        _log(f"demo checkpoints missing under {root}: building them (engines build-demo)")
        compute.run(build_demo, root, progress=True)
    torch.set_num_threads(args.threads)
    specs = builtin_specs(root)
    v1s = replace(specs["v1-fp32"], device=args.device)
    from engines.quant import read_int4_config

    v2q_s = replace(specs["v2-int4"], device=args.device, int4_kernel=args.int4_kernel,
                    group_size=read_int4_config(root / "v2-int4")["group_size"])
    v2f_s = EngineSpec(name="v2-fp32", checkpoint=str(root / "v2-fp32"), precision="fp32", attention="hybrid",
                       context_window=8192, sliding_window=1024, device=args.device)
    quick = args.quick
    report: dict = {
        "benchmark": "engines",
        "mode": "quick" if quick else "full",
        "host": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "cpu_capability": torch.backends.cpu.get_cpu_capability(), "device": args.device,
                 "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()[0]},
    }
    held = heldout_texts()
    engines = {}
    for s in (v1s, v2f_s, v2q_s):
        _log(f"loading {s.name}")
        engines[s.name] = load_engine(s, compute.default())  # one thread: the engines run one at a time
        engines[s.name].eos_ids = set()  # fixed-length generations for speed measurements
    from engines.int4_layer import Int4Linear

    report["host"]["int4_kernel"] = "cuda" if args.device != "cpu" else sorted(
        {m.kernel for m in engines["v2-int4"].loaded.model.modules() if isinstance(m, Int4Linear)})
    prompts = _prompts(engines["v1-fp32"], 32, 32, held)
    report["engines"] = {}
    for name, eng in engines.items():
        _log(f"benchmarking {name}")
        report["engines"][name] = bench_engine(eng, prompts, quick=quick, prefill_tokens=256 if quick else 512)
    _log("transformers generate baseline (V1)")
    new = 16 if quick else 64
    # torch work of this thread would give it an OpenMP team of its own: on the compute thread
    report["hf_generate_v1"] = compute.run(hf_generate_baseline, engines["v1-fp32"], prompts[0], new, 3 if quick else 5)
    _log("INT4 vs FP32 on the V2 checkpoint")
    fp, q = engines["v2-fp32"], engines["v2-int4"]
    sp = interleaved_speed(fp, q, prompts[1], new, 5 if quick else 10)
    qual = compute.run(quality, fp, q, held, chunks=8 if quick else 32, seq=256)
    fpe, qe = report["engines"]["v2-fp32"], report["engines"]["v2-int4"]
    report["int4_vs_fp32_v2"] = {
        "decode_b1_fp32_tok_s": sp["a_tok_s"],
        "decode_b1_int4_tok_s": sp["b_tok_s"],
        "speed_ratio_b1": sp["ratio_b_over_a"],
        "speed_ratio_b1_median": sp["ratio_median"],
        "speed_rounds": sp["rounds"],
        "speed_ratio_b8": round(qe["decode_tok_s_b8"] / fpe["decode_tok_s_b8"], 3),
        "speed_ratio_b32": round(qe["decode_tok_s_b32"] / fpe["decode_tok_s_b32"], 3),
        "prefill_ratio": round(qe["prefill_tok_s"] / fpe["prefill_tok_s"], 3),
        "linear_bytes_ratio": round(qe["linear_weight_bytes"] / fpe["linear_weight_bytes"], 4),
        "model_bytes_ratio": round(qe["weight_bytes"] / fpe["weight_bytes"], 4),
        **qual,
        "group_size": q.loaded.int4["group_size"],
        "lm_head_group_size": q.loaded.int4.get("lm_head_group_size"),
    }
    _log("V2 INT4 vs V1 FP32 as served")
    sv = interleaved_speed(engines["v1-fp32"], q, prompts[2], new, 3 if quick else 6)
    report["v2_int4_vs_v1_fp32_served"] = {
        "decode_b1_v1_tok_s": sv["a_tok_s"], "decode_b1_v2_int4_tok_s": sv["b_tok_s"],
        "decode_ratio_b1": sv["ratio_b_over_a"], "decode_ratio_b1_median": sv["ratio_median"],
        "bytes_ratio": round(qe["weight_bytes"] / report["engines"]["v1-fp32"]["weight_bytes"], 4),
    }
    _log("dynamic batching, 16 concurrent")
    report["dynamic_batching"] = {}
    for name in ("v1-fp32", "v2-int4"):
        report["dynamic_batching"][name] = dynamic_batching(engines[name], prompts, new, 16)
    from engines.int4_layer import cpu_dequant_supported, set_dequant_rows

    if cpu_dequant_supported() and args.device == "cpu":
        # the opt-in (spec field int4_dequant_rows) bf16 GEMM for prefills of >= 256 rows,
        # measured the same way; not in the targets: it is off by default (not batch-invariant)
        _log("dynamic batching, 16 concurrent, V2 INT4 with dequantized prefill (int4_dequant_rows=256)")
        set_dequant_rows(engines["v2-int4"].loaded.model, 256)
        try:
            report["dynamic_batching_v2_int4_dequant_rows_256"] = dynamic_batching(engines["v2-int4"], prompts, new, 16)
        finally:
            set_dequant_rows(engines["v2-int4"].loaded.model, 0)
    _log("static vs continuous batching, staggered arrivals (V2 INT4)")
    report["continuous_batching_v2_int4"] = {
        kind: staggered_arrivals(engines["v2-int4"], prompts, kind == "continuous", n=12 if quick else 24,
                                 max_new=24 if quick else 64)
        for kind in ("static", "continuous")
    }
    t = report["int4_vs_fp32_v2"]
    db = report["dynamic_batching"]
    report["targets"] = {
        "int4_decode_b1_speed_ratio>=3.2": t["speed_ratio_b1"] >= 3.2,
        "int4_linear_bytes<=1/7": t["linear_bytes_ratio"] <= 1 / 7,
        "int4_model_bytes<=1/4": t["model_bytes_ratio"] <= 1 / 4,
        "top1_agreement>=0.98": t["top1_agreement"] >= 0.98,
        "mean_kl<=1e-3": t["mean_kl"] <= 1e-3,
        "v1_ours>=hf_generate": report["hf_generate_v1"]["ours_over_hf"] >= 1.0,
        "dynamic_16_concurrent>=4x_sequential": all(d["speedup"] >= 4 for d in db.values()),
        "p99_queue<=max_wait+one_batch": all(d["queue_ms_p99"] <= d["max_wait_ms"] + d["batch_time_ms"] for d in db.values()),
    }
    report["host"]["loadavg_end"] = os.getloadavg()[0]
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
