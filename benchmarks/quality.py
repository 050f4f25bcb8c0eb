"""Offline output-quality benchmark: prints ONE JSON object on stdout (progress goes to stderr).

    python -m benchmarks.quality [--quick] [--root DIR] [--threads 2] [--device cpu] [--tiny]
                                 [--prompts heldout|demo] [--max-new-tokens 32]

On held-out prompts (standard-library sources the demo never trains on, see
``engines.demo.heldout_texts``), the same two pairs the live quality section measures:

* ``treatment_vs_control``: V2 INT4 scores V1 FP32's greedy completions;
* ``reference``: V2 FP32 scores V2 INT4's greedy completions.

Each completion is scored teacher-forced by both engines (``Engine.score``) and compared with
``abtest.services.quality.compare``, the function the live scoring uses: top-1 agreement (share
of the completion's tokens that are the scorer's argmax) and mean KL(generator || scorer) per
token, as ratio means over prompts with delta-method 95 % CIs (each prompt is one unit, as each
user is one unit live). Also the scoring throughput of each scorer (completion tokens per second
and scores per second, one score at a time). ``--tiny`` runs on tiny random checkpoints
(plumbing only: their figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from engines import tune_openmp

tune_openmp()  # before torch is imported (main imports it)

PAIRS = (("treatment_vs_control", "v1-fp32", "v2-int4"), ("reference", "v2-int4", "v2-fp32"))


def _log(msg: str) -> None:
    print(f"[quality {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def prompts_from(texts: list[str], n: int, chars: int) -> list[str]:
    """``n`` prompts of ``chars`` characters, at spread-out line starts of the held-out texts."""
    out: list[str] = []
    per = max(1, -(-n // max(1, len(texts))))
    for text in texts:
        lines = [i for i, c in enumerate(text) if c == "\n"]
        for k in range(per):
            if len(out) >= n or not lines:
                break
            start = lines[(k * len(lines)) // per] + 1
            chunk = text[start:start + chars]
            if len(chunk) == chars:
                out.append(chunk)
    return out[:n]


def _estimate(units: list[tuple[float, float]]) -> dict:
    from abtest import stats as S

    est = S.variant_estimate(S.RatioStats.from_values([m for m, _ in units], [d for _, d in units]))
    return {"estimate": est.mean, "ci_lower": est.ci_lower, "ci_upper": est.ci_upper, "units": est.n}


def run_pair(engines: dict, generator: str, scorer: str, prompts: list[str], max_new: int) -> dict:
    from abtest.services.quality import compare
    from engines.types import GenerationRequest

    gen, sco = engines[generator], engines[scorer]
    reqs = [GenerationRequest(prompt=p, max_new_tokens=max_new) for p in prompts]
    results = []
    for i in range(0, len(reqs), 8):
        results += gen.generate(reqs[i:i + 8])
    agree, kl, scored_tokens, seconds = [], [], 0, 0.0
    for p, r in zip(prompts, results):
        t = r.text
        g = gen.score(p, t, completion_ids=r.token_ids)  # the tokens as generated, as live
        t0 = time.perf_counter()
        s = sco.score(p, t, prompt_ids=g.prompt_ids, completion_ids=g.token_ids)  # as live
        seconds += time.perf_counter() - t0
        pair = compare(g, s)
        if pair.tokens:
            agree.append((pair.agree, pair.tokens))
            kl.append((pair.kl_sum, pair.tokens))
            scored_tokens += pair.tokens
    return {"generator": generator, "scorer": scorer, "prompts": len(prompts), "scored": len(agree),
            "tokens": scored_tokens, "agreement": _estimate(agree), "kl": _estimate(kl),
            "scoring": {"tokens_per_s": round(scored_tokens / seconds, 1) if seconds else None,
                        "scores_per_s": round(len(prompts) / seconds, 2) if seconds else None}}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="16 prompts instead of 96")
    ap.add_argument("--root", default=None, help="checkpoint root (default $ABTEST_CHECKPOINT_DIR or var/checkpoints)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--prompt-chars", type=int, default=240)
    ap.add_argument("--tiny", action="store_true", help="tiny random checkpoints (plumbing only)")
    ap.add_argument("--prompts", choices=["heldout", "demo"], default="heldout",
                    help="held-out standard-library text (default), or the demo's own prompts (abtest.demo."
                         "DEMO_PROMPTS, each once) to compare with the demo's live quality section")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import dataclasses

    import torch

    torch.set_num_threads(args.threads)
    from engines import compute, load_engine
    from engines.demo import build_demo, heldout_texts
    from engines.spec import builtin_specs, check_checkpoint

    if args.tiny:
        from engines.testing import build_tiny_checkpoints

        specs = build_tiny_checkpoints(args.root or os.path.join(tempfile.gettempdir(), "abtest-tiny-quality"))
    else:
        specs = builtin_specs(args.root)
        try:
            for name in ("v1-fp32", "v2-fp32", "v2-int4"):
                check_checkpoint(specs[name])
        except FileNotFoundError:
            _log("building the demo checkpoints")
            build_demo(args.root, progress=True)
    engines = {n: load_engine(dataclasses.replace(specs[n], device=args.device), compute.default())
               for n in ("v1-fp32", "v2-fp32", "v2-int4")}
    if args.prompts == "demo":
        from abtest.demo import DEMO_PROMPTS

        prompts = list(DEMO_PROMPTS)
    else:
        prompts = prompts_from(heldout_texts(), 16 if args.quick else 96, args.prompt_chars)
    _log(f"{len(prompts)} {args.prompts} prompts, {args.max_new_tokens} new tokens each")
    out = {"benchmark": "quality", "quick": args.quick, "tiny": args.tiny, "device": args.device,
           "threads": args.threads, "prompts": args.prompts, "max_new_tokens": args.max_new_tokens, "pairs": {}}
    t_all = time.perf_counter()
    for comparison, generator, scorer in PAIRS:
        _log(f"{comparison}: {scorer} scores {generator}'s greedy completions")
        out["pairs"][comparison] = run_pair(engines, generator, scorer, prompts, args.max_new_tokens)
    out["seconds"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
