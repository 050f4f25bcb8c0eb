"""``engines`` command group (mounted by the service as ``abtest engines``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from engines.spec import CHECKPOINT_DIR_ENV, default_checkpoint_root, load_registry

__all__ = ["engines", "main"]


@click.group(name="engines", help="Inference engines: demo checkpoints, INT4 quantization, registry.")
def engines() -> None:
    pass


@engines.command("quantize")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.argument("dst", type=click.Path(file_okay=False))
@click.option("--group-size", type=click.Choice(["32", "64", "128"]), default="64", show_default=True,
              help="Input columns per (scale, zero) group.")
@click.option("--lm-head-group-size", type=click.Choice(["none", "32", "64", "128"]), default="32",
              show_default=True, help="Group size for the output head ('none' keeps it in bf16).")
@click.option("--calibration", type=click.Choice(["stdlib", "none"]), default="stdlib", show_default=True,
              help="Activation statistics for the clipping search: Python stdlib text, or none (plain weight MSE).")
@click.option("--method", type=click.Choice(["gptq", "rtn"]), default="gptq", show_default=True,
              help="gptq: error compensation from calibration inputs; rtn: round to nearest.")
@click.option("--no-clip-search", is_flag=True, help="Group ranges from plain min/max (no clipping search).")
def quantize_cmd(src, dst, group_size, lm_head_group_size, calibration, method, no_clip_search) -> None:
    """Quantize the Linear layers of HF checkpoint SRC into the INT4 artifact DST."""
    from engines.demo import stdlib_texts
    from engines.quant import quantize_checkpoint

    calib = stdlib_texts(max_chars=400_000) if calibration == "stdlib" else None
    meta = quantize_checkpoint(
        src, dst, int(group_size),
        lm_head_group_size=None if lm_head_group_size == "none" else int(lm_head_group_size),
        calibration_texts=calib, clip_search=not no_clip_search, method=method,
        progress=lambda m: click.echo(m, err=True),
    )
    click.echo(json.dumps({k: v for k, v in meta.items() if k != "quantized"} | {"layers": len(meta["quantized"])}, indent=2))


@engines.command("build-demo")
@click.option("--root", type=click.Path(file_okay=False), default=None, envvar=CHECKPOINT_DIR_ENV,
              help="Checkpoint root (default $ABTEST_CHECKPOINT_DIR or ./var/checkpoints).")
@click.option("--threads", type=click.IntRange(min=1), default=None, envvar="ABTEST_DEMO_THREADS",
              help="torch CPU threads for the build (default: torch's; env ABTEST_DEMO_THREADS).")
@click.option("--force", is_flag=True, help="Rebuild even when cached.")
@click.option("--if-missing", is_flag=True,
              help="Do nothing (without loading torch) when the served demo checkpoints, v1-fp32 and "
                   "v2-int4, are already under the root (yours or built before): for one-shot setup jobs.")
def build_demo_cmd(root, threads, force, if_missing) -> None:
    """Build the demo tokenizer and V1/V2 checkpoints (cached), and the V2 INT4 artifact."""
    if force and if_missing:
        raise click.UsageError("--force and --if-missing contradict each other")
    root = default_checkpoint_root(root)
    if if_missing and served_demo_present(root):
        click.echo(json.dumps({"root": str(root), "v1-fp32": "present", "v2-int4": "present", "built": False}))
        return
    from engines.demo import build_demo

    summary = build_demo(root, force=force, progress=True, threads=threads)
    click.echo(json.dumps(summary, indent=2, default=str))


def served_demo_present(root: Path) -> bool:
    """True when ``root`` holds the two checkpoints the built-in engines load: ``v1-fp32`` (a
    Hugging Face checkpoint) and ``v2-int4`` (an INT4 artifact)."""
    return ((root / "v1-fp32" / "config.json").is_file() and (root / "v2-int4" / "config.json").is_file()
            and (root / "v2-int4" / "int4_config.json").is_file())


@engines.command("list")
@click.option("--registry", type=click.Path(dir_okay=False), default=None, help="JSON file of extra engine specs.")
@click.option("--root", type=click.Path(file_okay=False), default=None, envvar=CHECKPOINT_DIR_ENV,
              help="Checkpoint root (default $ABTEST_CHECKPOINT_DIR or ./var/checkpoints).")
def list_cmd(registry, root) -> None:
    """List the engine specs (built-ins plus the registry file)."""
    try:
        specs = load_registry(registry, checkpoint_root=root)
    except ValueError as e:
        raise click.ClickException(str(e)) from None
    for s in specs.values():
        ok = (Path(s.checkpoint) / "config.json").is_file()
        click.echo(json.dumps({**s.to_dict(), "checkpoint_present": ok}))


def main() -> None:  # python -m engines.cli
    from engines import tune_openmp

    tune_openmp()
    engines(prog_name="engines")


if __name__ == "__main__":
    sys.exit(main())
