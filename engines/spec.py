"""Engine specs: what an engine is, as data. Must not import torch (the API server imports it)."""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engines.device import DeviceError, parse_device

__all__ = [
    "EngineSpec",
    "builtin_specs",
    "load_registry",
    "default_checkpoint_root",
    "check_checkpoint",
    "PRECISIONS",
    "ATTENTIONS",
    "SCHEDULERS",
    "CHECKPOINT_DIR_ENV",
    "GROUP_SIZES",
    "INT4_KERNELS",
]

PRECISIONS = ("fp32", "bf16", "fp16", "int4")
ATTENTIONS = ("dense", "hybrid")
SCHEDULERS = ("static", "continuous")
CHECKPOINT_DIR_ENV = "ABTEST_CHECKPOINT_DIR"  # read by the commands (engines CLI, benchmarks), never here
GROUP_SIZES = (32, 64, 128)
INT4_KERNELS = ("auto", "batched", "aten")  # engines.int4.KERNELS (kept torch-free here)
DEVICES = ("cpu", "cuda")
# The checkpoint directories `engines build-demo` writes under its root.
DEMO_DIRS = ("v1-fp32", "v2-fp32", "v2-int4")


@dataclass(frozen=True)
class EngineSpec:
    name: str  # e.g. "v1-fp32", "v2-int4"
    checkpoint: str  # local dir: a Hugging Face checkpoint, or an INT4 artifact (engines quantize)
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16" | "int4" (int4 needs an INT4 artifact)
    group_size: int | None = None  # int4 only: 32 | 64 | 128 (must match the artifact)
    attention: str = "dense"  # "dense" | "hybrid" (hybrid: lower layers sliding window, upper global)
    context_window: int = 2048  # prompt + generated tokens must fit
    sliding_window: int | None = None  # hybrid only; None = the checkpoint's config value
    device: str = "cpu"  # "cpu" | "cuda" | "cuda:N"
    max_batch_size: int = 256  # BatchingScheduler: flush when this many requests wait
    max_wait_ms: float = 50.0  # BatchingScheduler: flush when the oldest waited this long
    idle_gap_ms: float = 2.0  # ... or when no request arrived for this long (a lone request starts at once)
    # Serving: "static" (BatchingScheduler: a batch runs to its end) or "continuous"
    # (ContinuousBatchingScheduler: requests join and leave a running decode between steps;
    # more throughput and a far shorter TTFT, but a longer p99 under sustained open-loop load:
    # the table in engines/README.md, "Generation").
    scheduler: str = "static"
    prefill_chunk: int = 256  # continuous: a longer prompt is prefilled this many tokens per iteration
    max_queue: int = 1024  # BatchingScheduler: submit() raises Overloaded beyond this
    kv_budget_gb: float = 3.0  # one static batch's KV cache at most this: a larger batch runs as several
    num_threads: int | None = None  # torch CPU threads for this engine (None: leave as is)
    description: str = ""  # free text shown by `engines list`
    # What an hour of this engine's machine costs (any currency, the same for every engine of an
    # experiment); cost per request = compute_ms / 3.6e6 x cost_per_hour. None: no price, and
    # the report shows cost as unavailable rather than zero.
    cost_per_hour: float | None = None
    # Embedded mode: load at start-up (True) or on first use (False; e.g. a quality reference,
    # which only scoring jobs call, off the request path).
    preload: bool = True
    # int4 on CPU: which matmul kernel ("auto": the batched kernel where the CPU has AVX-512,
    # else torch's _weight_int4pack_mm_for_cpu; "batched"; "aten": always torch's). See
    # engines/int4.
    int4_kernel: str = "auto"
    # int4 on CPU, opt-in: from this many rows (prefill tokens) on, a layer dequantizes to one
    # bf16 GEMM (faster for long prefills, but not bit-identical across batch sizes); 0: never
    int4_dequant_rows: int = 0
    # int4 on CPU: from this many rows on, a CPU with AMX (Sapphire Rapids and later) runs the
    # batched weights through the AMX tile kernel (bf16 weights rebuilt once per 32 columns, then
    # tile dot products); below it, and on CPUs without AMX, the fp32-FMA kernel. 0: never.
    int4_amx_rows: int = 4

    def __post_init__(self) -> None:
        problems = validate_fields(dataclasses.asdict(self))
        if problems:
            raise ValueError(f"engine spec {self.name!r}: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def validate_fields(d: dict[str, Any]) -> list[str]:
    """Human-readable problems with a spec's field values (each names the field)."""
    p: list[str] = []
    if not isinstance(d.get("name"), str) or not d.get("name"):
        p.append("field 'name' must be a non-empty string")
    if not isinstance(d.get("checkpoint"), str) or not d.get("checkpoint"):
        p.append("field 'checkpoint' must be a non-empty string")
    if d.get("precision") not in PRECISIONS:
        p.append(f"field 'precision' must be one of {PRECISIONS}, got {d.get('precision')!r}")
    gs = d.get("group_size")
    if d.get("precision") == "int4":
        if gs not in GROUP_SIZES:
            p.append(f"field 'group_size' must be one of {GROUP_SIZES} for int4, got {gs!r}")
    elif gs is not None:
        p.append("field 'group_size' is only valid with precision 'int4'")
    if d.get("scheduler", "static") not in SCHEDULERS:
        p.append(f"field 'scheduler' must be one of {SCHEDULERS}, got {d.get('scheduler')!r}")
    if d.get("attention") not in ATTENTIONS:
        p.append(f"field 'attention' must be one of {ATTENTIONS}, got {d.get('attention')!r}")
    for f in ("context_window", "max_batch_size", "max_queue", "prefill_chunk"):
        v = d.get(f)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            p.append(f"field {f!r} must be a positive integer, got {v!r}")
    sw = d.get("sliding_window")
    if sw is not None and (not isinstance(sw, int) or isinstance(sw, bool) or sw < 1):
        p.append(f"field 'sliding_window' must be a positive integer or null, got {sw!r}")
    kv = d.get("kv_budget_gb", 3.0)
    if not isinstance(kv, (int, float)) or isinstance(kv, bool) or not 0 < kv < float("inf"):
        p.append(f"field 'kv_budget_gb' must be a number > 0, got {kv!r}")
    for f in ("max_wait_ms", "idle_gap_ms"):
        mw = d.get(f, 0.0)
        if not isinstance(mw, (int, float)) or isinstance(mw, bool) or not 0 <= mw < float("inf"):
            p.append(f"field {f!r} must be a number >= 0, got {mw!r}")
    dev = d.get("device")
    try:
        parse_device(dev)
    except DeviceError:
        p.append(f"field 'device' must be 'cpu', 'cuda' or 'cuda:N' (N a GPU index), got {dev!r}")
    if not isinstance(d.get("preload", True), bool):
        p.append(f"field 'preload' must be true or false, got {d.get('preload')!r}")
    rows = d.get("int4_dequant_rows", 0)
    if not isinstance(rows, int) or isinstance(rows, bool) or rows < 0:
        p.append(f"field 'int4_dequant_rows' must be an integer >= 0, got {rows!r}")
    amx_rows = d.get("int4_amx_rows", 4)
    if not isinstance(amx_rows, int) or isinstance(amx_rows, bool) or amx_rows < 0:
        p.append(f"field 'int4_amx_rows' must be an integer >= 0, got {amx_rows!r}")
    if d.get("int4_kernel", "auto") not in INT4_KERNELS:
        p.append(f"field 'int4_kernel' must be one of {INT4_KERNELS}, got {d.get('int4_kernel')!r}")
    nt = d.get("num_threads")
    if nt is not None and (not isinstance(nt, int) or isinstance(nt, bool) or nt < 1):
        p.append(f"field 'num_threads' must be a positive integer or null, got {nt!r}")
    price = d.get("cost_per_hour")
    if price is not None and (not isinstance(price, (int, float)) or isinstance(price, bool)
                              or not price >= 0 or price == float("inf")):
        p.append(f"field 'cost_per_hour' must be a finite number >= 0 or null, got {price!r}")
    return p


def default_checkpoint_root(raw: str | os.PathLike | None = None) -> Path:
    """``raw``, else ``var/checkpoints``, as an absolute path: a relative value is resolved
    against the working directory now, so the specs built from it do not move when the
    directory changes later (or when written into a registry file elsewhere). The engines read
    no environment: the commands pass ``$ABTEST_CHECKPOINT_DIR`` in (:data:`CHECKPOINT_DIR_ENV`)."""
    return Path(os.path.abspath(os.path.expanduser(raw or "var/checkpoints")))


def builtin_specs(checkpoint_root: str | os.PathLike | None = None) -> dict[str, EngineSpec]:
    """The built-in engines on the demo checkpoints (`engines build-demo` makes them)."""
    root = Path(checkpoint_root) if checkpoint_root is not None else default_checkpoint_root()
    if not root.is_absolute():
        root = Path(os.path.abspath(os.path.expanduser(root)))
    return {
        "v1-fp32": EngineSpec(
            name="v1-fp32",
            checkpoint=str(root / "v1-fp32"),
            precision="fp32",
            attention="dense",
            context_window=2048,
            description="V1: dense attention on every layer, FP32",
            cost_per_hour=1.20,  # demo price, the same machine for both: costs differ by engine time only
        ),
        "v2-int4": EngineSpec(
            name="v2-int4",
            checkpoint=str(root / "v2-int4"),
            precision="int4",
            group_size=64,
            attention="hybrid",
            context_window=8192,
            sliding_window=1024,
            description="V2: hybrid sliding-window/global attention, INT4 group-wise weights",
            cost_per_hour=1.20,  # demo price, the same machine for both: costs differ by engine time only
        ),
        "v2-fp32": EngineSpec(
            name="v2-fp32",
            checkpoint=str(root / "v2-fp32"),
            precision="fp32",
            attention="hybrid",
            context_window=8192,
            sliding_window=1024,
            description="V2 at full precision: the checkpoint v2-int4 is quantized from (quality reference)",
            cost_per_hour=1.20,  # demo price, the same machine for both: costs differ by engine time only
            preload=False,  # only scoring jobs use it: loaded on the first one
        ),
    }


def check_checkpoint(spec: EngineSpec) -> None:
    """Raise FileNotFoundError, naming the directory and what to do, unless the spec's
    checkpoint directory holds a ``config.json``."""
    ck = Path(os.path.abspath(os.path.expanduser(spec.checkpoint)))
    if (ck / "config.json").is_file():
        return
    what = "does not exist" if not ck.exists() else "has no config.json (not a Hugging Face checkpoint)"
    if ck.name in DEMO_DIRS:
        todo = f"build the demo checkpoints with `abtest engines build-demo --root {ck.parent}`"
    else:
        todo = ("copy a Hugging Face checkpoint directory there or point the spec's 'checkpoint' at one "
                "(the demo checkpoints are built with `abtest engines build-demo`)")
    raise FileNotFoundError(f"engine {spec.name!r}: checkpoint directory {ck} {what}; {todo}")


_FIELDS = {f.name for f in dataclasses.fields(EngineSpec)}


def spec_from_dict(d: Any, *, base: EngineSpec | None = None, where: str = "") -> EngineSpec:
    """An EngineSpec from a JSON object; a ``base`` spec with the same name supplies defaults."""
    if not isinstance(d, dict):
        raise ValueError(f"{where}: each engine must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - _FIELDS)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {sorted(_FIELDS)}")
    values = base.to_dict() if base is not None else {}
    values.update(d)
    for f in ("name", "checkpoint"):
        if f not in values:
            raise ValueError(f"{where}: missing required field {f!r}")
    problems = validate_fields({**{f.name: f.default for f in dataclasses.fields(EngineSpec)}, **values})
    if problems:
        raise ValueError(f"{where} ({values.get('name')!r}): " + "; ".join(problems))
    return EngineSpec(**values)


def load_registry(
    path: str | os.PathLike | None = None, checkpoint_root: str | os.PathLike | None = None
) -> dict[str, EngineSpec]:
    """Built-in specs, overridden or extended by a JSON file ``{"engines": [{...}, ...]}``.

    ``path`` is the file every process reads (``ABTEST_ENGINE_REGISTRY``); None gives the
    built-ins alone. An entry whose name matches a built-in overrides only the fields it gives.
    A relative ``checkpoint`` is resolved against the folder of the JSON file, not the working
    directory: ``"checkpoint": "ckpt/mine-int4"`` in ``/etc/abtest/engines.json`` is
    ``/etc/abtest/ckpt/mine-int4`` whichever directory the process starts in (``~`` is expanded
    first). Every checkpoint path in the result is absolute.

    Raises ValueError naming the file and the problem: the file does not exist, is not valid
    JSON, has no ``engines`` list, or an entry has a bad field (named with its index).
    """
    specs = builtin_specs(checkpoint_root)
    if path is None:
        return specs
    path = Path(os.path.abspath(os.path.expanduser(path)))  # checkpoints relative to it stay put
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"engine registry {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"engine registry {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("engines"), list):
        raise ValueError(f"engine registry {path}: expected an object with an 'engines' list")
    for i, entry in enumerate(data["engines"]):
        where = f"engine registry {path}, engines[{i}]"
        if isinstance(entry, dict) and isinstance(entry.get("checkpoint"), str):
            ck = Path(entry["checkpoint"]).expanduser()
            entry = {**entry, "checkpoint": str(ck if ck.is_absolute() else path.parent / ck)}
        base = specs.get(entry.get("name")) if isinstance(entry, dict) else None
        spec = spec_from_dict(entry, base=base, where=where)
        specs[spec.name] = spec
    return specs
