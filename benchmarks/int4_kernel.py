"""INT4 matmul kernels, per-row cost: prints ONE JSON object on stdout.

    python -m benchmarks.int4_kernel [--rows 1,4,8,16,32,128,512] [--reps 5] [--threads 1]
                                     [--layers 8] [--clean-build] [--engine-rounds N]

Milliseconds per pass over the INT4 layer shapes of the demo model (per decoder layer fused
q/k/v 1536x1024, o 1024x1024, fused gate/up 5632x1024, down 1024x2816, all g64; the head
8192x1024 g32; ``--layers`` decoder layers) for torch's ``_weight_int4pack_mm_for_cpu``
("aten"), this project's ``batched`` kernel as a layer dispatches it (the AVX512-BF16 ``dot``
kernel where the CPU has AVX512-BF16 and no AMX, else the fp32-FMA one), the ``fma`` kernel
itself, the opt-in ``dequant_gemm`` path (weight dequantized to bf16, one oneDNN GEMM), on a CPU
with AVX512-BF16 the ``dot`` kernel itself, and on a CPU with AMX the ``amx`` tile kernel and
``served`` (what an engine runs there: FMA below 4 rows, AMX from 4), at each row count. They run interleaved rep by rep on the
same random weights and activations (the machine may be shared: ratios from
the same reps are what to read); the median of the reps is reported. Also: each kernel's max
relative error against the dequantize reference (``engines.quant.dequantize``, fp32 matmul of
the same bf16 activations) and the kernel's build time (``--clean-build``: into an empty cache).
``--engine-rounds N``: the demo V2 INT4 engine on each kernel, decode and prefill tok/s, the two
engines alternating round by round.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time


def _layer_shapes(layers: int) -> list[tuple[int, int, int]]:
    per_layer = [(1536, 1024, 64), (1024, 1024, 64), (5632, 1024, 64), (1024, 2816, 64)]
    return per_layer * layers + [(8192, 1024, 32)]


def engine_rounds(root, rounds: int) -> dict:
    """The demo V2 INT4 engine loaded twice (aten, batched): per round, each engine's decode
    tok/s at batch 1, 8 and 32 (16 new tokens) and prefill tok/s (one 256-token prompt)."""
    import dataclasses

    import torch

    from benchmarks.engines import _decode_rate, _prompts, checkpoint_root
    from engines import GenerationRequest, compute, load_engine
    from engines.demo import heldout_texts
    from engines.spec import builtin_specs

    spec = builtin_specs(checkpoint_root(root))["v2-int4"]
    engines = {k: load_engine(dataclasses.replace(spec, int4_kernel=k), compute.default()) for k in ("aten", "batched")}
    for e in engines.values():
        e.eos_ids = set()
    held = heldout_texts()
    prompts = _prompts(engines["aten"], 32, 32, held)
    long_prompt = _prompts(engines["aten"], 1, 256, held)[0]
    out: dict = {"threads": torch.get_num_threads(), "rounds": rounds}
    rates: dict = {}
    for r in range(rounds):
        for kind in ("aten", "batched") if r % 2 == 0 else ("batched", "aten"):
            eng = engines[kind]
            for b in (1, 8, 32):
                rates.setdefault((kind, f"decode_b{b}"), []).append(_decode_rate(eng, prompts[:b], 16)["decode_tok_s"])
            t0 = time.perf_counter()
            res = eng.generate([GenerationRequest(long_prompt, max_new_tokens=1)])[0]
            rates.setdefault((kind, "prefill"), []).append(res.prompt_tokens / (time.perf_counter() - t0))
    for what in ("decode_b1", "decode_b8", "decode_b32", "prefill"):
        a, b = rates[("aten", what)], rates[("batched", what)]
        out[what] = {"aten_tok_s_best": round(max(a), 1), "batched_tok_s_best": round(max(b), 1),
                     "ratio_best": round(max(b) / max(a), 2),
                     "ratio_median": round(statistics.median(y / x for x, y in zip(a, b)), 2)}
    for e in engines.values():
        e.close()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", default="1,4,8,16,32,128,512")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--clean-build", action="store_true", help="time a build into an empty cache")
    ap.add_argument("--engine-rounds", type=int, default=0,
                    help="also: the demo V2 INT4 engine on each kernel, decode tok/s at batch 1/8/32 and "
                         "prefill, alternating, this many rounds (needs the demo checkpoints)")
    ap.add_argument("--root", default=None, help="demo checkpoint root (default $ABTEST_CHECKPOINT_DIR or var/checkpoints)")
    args = ap.parse_args(argv)

    import torch

    from engines.int4 import amx_available, build_seconds, dequant_matmul, dot_available, kernel_available, matmul, pack
    from engines.int4_layer import Int4Linear, _scales_and_zeros
    from engines.quant import dequantize, quantize_weight

    torch.set_num_threads(args.threads)
    report: dict = {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "machine": platform.processor() or platform.machine(), "threads": args.threads,
                    "reps": args.reps}
    if args.clean_build:  # in a fresh process: one process loads the library once
        with tempfile.TemporaryDirectory() as d:
            code = f"from engines.int4.build import load_kernel; print(load_kernel({d!r}))"
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            report["build_s_clean_cache"] = round(float(out.stdout.strip().splitlines()[-1]), 2)
    if not kernel_available():
        print(json.dumps({**report, "error": "batched kernel unavailable on this machine"}))
        return 1
    report["load_s"] = round(build_seconds() or 0.0, 2)

    g = torch.Generator().manual_seed(0)
    shapes = _layer_shapes(args.layers)
    uniq = sorted(set(shapes))
    weights = {}
    # batched: what a layer runs (matmul's dispatch); fma / dot / amx: that kernel at every row
    # count; served (AMX CPUs): the FMA kernel below the spec's int4_amx_rows, 4, AMX from there
    has_dot = bool(torch.ops.abtest_int4.int4_dot_available())
    kinds = (("aten", "batched", "fma", "dequant_gemm") + (("dot",) if has_dot else ())
             + (("amx", "served") if amx_available() else ()))
    report["amx"] = amx_available()
    report["avx512_bf16"] = has_dot
    report["batched_dispatches_to"] = "dot" if dot_available() else "fma (amx from 4 rows)" if amx_available() else "fma"
    errors: dict[str, float] = dict.fromkeys((k for k in kinds if k != "served"), 0.0)
    for n, k, gs in uniq:
        w = torch.randn(n, k, generator=g) * 0.05
        codes, s, z = quantize_weight(w, gs, clip_search=False)
        aten = Int4Linear.kernel_tensors(codes, s, z, "cpu", kernel="aten")
        new = {"weight_packed": pack(codes), "scales_and_zeros": _scales_and_zeros(s, z)}
        weights[(n, k, gs)] = (aten, new)
        x = torch.randn(33, k, generator=g).to(torch.bfloat16)
        ref = x.float() @ dequantize(codes, s, z, gs).t()
        ya = torch.ops.aten._weight_int4pack_mm_for_cpu(x, aten["weight_packed"], gs, aten["scales_and_zeros"])
        yn = matmul(x, new["weight_packed"], gs, new["scales_and_zeros"])
        scale = ref.abs().max().item()
        errors["aten"] = max(errors["aten"], (ya.float() - ref).abs().max().item() / scale)
        errors["batched"] = max(errors["batched"], (yn.float() - ref).abs().max().item() / scale)
        yf = torch.ops.abtest_int4.int4_mm(x, new["weight_packed"], gs, new["scales_and_zeros"])
        errors["fma"] = max(errors["fma"], (yf.float() - ref).abs().max().item() / scale)
        if has_dot:
            yd = torch.ops.abtest_int4.int4_mm_dot(x, new["weight_packed"], gs, new["scales_and_zeros"])
            errors["dot"] = max(errors["dot"], (yd.float() - ref).abs().max().item() / scale)
        yg = dequant_matmul(x, new["weight_packed"], gs, new["scales_and_zeros"])
        errors["dequant_gemm"] = max(errors["dequant_gemm"], (yg.float() - ref).abs().max().item() / scale)
        if "amx" in kinds:
            yx = matmul(x, new["weight_packed"], gs, new["scales_and_zeros"], amx_min_rows=1)
            errors["amx"] = max(errors["amx"], (yx.float() - ref).abs().max().item() / scale)
    report["max_rel_err_vs_reference"] = {k: float(f"{v:.3e}") for k, v in errors.items()}

    def one_pass(kind: str, xs: dict) -> float:
        t0 = time.perf_counter()
        for shp in shapes:
            aten, new = weights[shp]
            x = xs[shp[1]]
            if kind == "aten":
                torch.ops.aten._weight_int4pack_mm_for_cpu(x, aten["weight_packed"], shp[2], aten["scales_and_zeros"])
            elif kind == "batched":
                matmul(x, new["weight_packed"], shp[2], new["scales_and_zeros"])
            elif kind == "fma":
                torch.ops.abtest_int4.int4_mm(x, new["weight_packed"], shp[2], new["scales_and_zeros"])
            elif kind == "dot":
                torch.ops.abtest_int4.int4_mm_dot(x, new["weight_packed"], shp[2], new["scales_and_zeros"])
            elif kind == "amx":
                matmul(x, new["weight_packed"], shp[2], new["scales_and_zeros"], amx_min_rows=1)
            elif kind == "served":
                matmul(x, new["weight_packed"], shp[2], new["scales_and_zeros"], amx_min_rows=4)
            else:
                dequant_matmul(x, new["weight_packed"], shp[2], new["scales_and_zeros"])
        return (time.perf_counter() - t0) * 1e3

    rows = [int(r) for r in args.rows.split(",")]
    table = []
    for m in rows:
        xs = {k: torch.randn(m, k, generator=g).to(torch.bfloat16) for k in {s[1] for s in shapes}}
        for kind in kinds:
            one_pass(kind, xs)  # warm-up
        times: dict[str, list[float]] = {k: [] for k in kinds}
        for rep in range(args.reps):
            for kind in kinds if rep % 2 == 0 else kinds[::-1]:
                times[kind].append(one_pass(kind, xs))
        row: dict = {"rows": m}
        for kind in kinds:
            row[f"{kind}_ms"] = round(statistics.median(times[kind]), 2)
            row[f"{kind}_ms_min"] = round(min(times[kind]), 2)
        for kind in kinds[1:]:  # per rep, aten's time over this one's (same rep: same machine load)
            row[f"{kind}_speedup_median"] = round(statistics.median(
                [a / b for a, b in zip(times["aten"], times[kind])]), 2)
        table.append(row)
        print(f"[int4_kernel] {row}", file=sys.stderr, flush=True)
    report["ms_per_pass"] = table
    report["layers"] = len(shapes)
    if args.engine_rounds:
        report["engine_v2_int4"] = engine_rounds(args.root, args.engine_rounds)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GOMP_SPINCOUNT", "20000")
    sys.exit(main())
