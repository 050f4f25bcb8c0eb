"""Device checks at start-up: a CUDA device this machine lacks, or a malformed device string,
is one clear sentence from every entry point (load_engine, `abtest worker`, the engines
benchmark), raised before anything touches the device."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from engines.device import DeviceError, check_device, parse_device
from engines.spec import EngineSpec, load_registry
from engines.types import EngineError

ROOT = Path(__file__).resolve().parents[2]
# A CUDA device that does not exist here: cuda:0 on a machine without CUDA, else one past the last GPU.
MISSING = f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda:0"
MISSING_WHY = ("requested but only" if torch.cuda.is_available()
               else "no CUDA support" if not torch.backends.cuda.is_built() else "no GPU visible")
MALFORMED = ["gpu", "cuda:x", "cuda:", "cuda:-1", "cpu:0", "CUDA", "", " cuda:0", None, 0]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ABTEST_")}
    env.update({"ABTEST_BROKER_URL": "redis://127.0.0.1:6379/15",
                "ABTEST_DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite'}",
                "ABTEST_CHECKPOINT_DIR": str(tmp_path / "checkpoints"), **extra})
    return env


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


# --- the check itself ------------------------------------------------------------------------

@pytest.mark.parametrize("device,parsed", [("cpu", ("cpu", None)), ("cuda", ("cuda", None)),
                                           ("cuda:0", ("cuda", 0)), ("cuda:12", ("cuda", 12))])
def test_parse_device_accepts_the_three_forms(device, parsed) -> None:
    assert parse_device(device) == parsed


@pytest.mark.parametrize("device", MALFORMED)
def test_malformed_devices_are_named(device) -> None:
    with pytest.raises(DeviceError, match=r"invalid device .*expected 'cpu', 'cuda' or 'cuda:N'"):
        check_device(device)


def test_cpu_is_always_available_and_needs_no_torch() -> None:
    check_device("cpu")
    code = ("import sys; from engines.device import check_device; check_device('cpu'); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_missing_cuda_device_on_this_machine() -> None:
    with pytest.raises(DeviceError) as info:
        check_device(MISSING)
    message = str(info.value)
    assert message.startswith(f"device {MISSING!r} is not available: ") and MISSING_WHY in message
    assert torch.__version__ in message or "requested but only" in message
    assert issubclass(DeviceError, EngineError) and info.value.code == "device_unavailable"


def test_no_gpu_visible(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match=r"device 'cuda' is not available: CUDA is not available: no GPU visible"):
        check_device("cuda")


def test_index_beyond_the_visible_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    check_device("cuda")
    check_device("cuda:0")
    with pytest.raises(DeviceError, match=r"cuda:3 requested but only 1 CUDA device is visible \(cuda:0\)"):
        check_device("cuda:3")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(DeviceError, match=r"only 2 CUDA devices are visible \(cuda:0..cuda:1\)"):
        check_device("cuda:2")


def test_specs_and_registry_reject_malformed_devices(tmp_path) -> None:
    with pytest.raises(ValueError, match="field 'device'.*'cuda:x'"):
        EngineSpec(name="x", checkpoint="c", device="cuda:x")
    f = tmp_path / "engines.json"
    f.write_text(json.dumps({"engines": [{"name": "v1-fp32", "device": "gpu"}]}))
    with pytest.raises(ValueError, match=r"engines\[0\].*field 'device'.*'gpu'"):
        load_registry(f, checkpoint_root=tmp_path)


# --- load_engine -----------------------------------------------------------------------------

def test_load_engine_checks_the_device_before_loading(tiny_specs, monkeypatch) -> None:
    import engines.runtime as runtime
    from engines import load_engine

    def never(*a, **k):
        raise AssertionError("load_model called despite an unusable device")

    monkeypatch.setattr(runtime, "load_model", never)
    spec = dataclasses.replace(tiny_specs["v1-fp32"], device=MISSING)
    with pytest.raises(DeviceError, match=rf"engine 'v1-fp32': device '{MISSING}' is not available: .*{MISSING_WHY}"):
        load_engine(spec)
    with pytest.raises(DeviceError, match="invalid device 'gpu'"):
        load_engine(_unchecked(tiny_specs["v2-int4"], device="gpu"))


def _unchecked(spec: EngineSpec, **changes) -> EngineSpec:
    """A spec with field values that EngineSpec's own validation would refuse (a hand-built object)."""
    obj = object.__new__(EngineSpec)
    for k, v in {**spec.to_dict(), **changes}.items():
        object.__setattr__(obj, k, v)
    return obj


def test_load_engine_names_a_missing_checkpoint_and_how_to_build_it(tmp_path) -> None:
    from engines import load_engine
    from engines.spec import builtin_specs

    root = tmp_path / "var" / "checkpoints"
    with pytest.raises(FileNotFoundError) as info:
        load_engine(builtin_specs(root)["v2-int4"])
    message = str(info.value)
    assert f"checkpoint directory {root / 'v2-int4'} does not exist" in message
    assert f"abtest engines build-demo --root {root}" in message


def test_load_engine_on_cpu_still_works(tiny_specs) -> None:
    from engines import GenerationRequest, load_engine

    engine = load_engine(dataclasses.replace(tiny_specs["v1-fp32"], device="cpu"))
    assert engine.generate([GenerationRequest("import os", max_new_tokens=2)])[0].completion_tokens >= 1


# --- abtest worker ---------------------------------------------------------------------------

def test_worker_cli_device_option_fails_fast(tmp_path) -> None:
    out = _run(["-m", "abtest", "worker", "--engine", "v1-fp32", "--device", MISSING], _env(tmp_path))
    assert out.returncode != 0
    assert f"device {MISSING!r} is not available" in out.stderr and MISSING_WHY in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_worker_cli_spec_device_from_the_registry_fails_fast(tmp_path) -> None:
    registry = tmp_path / "engines.json"
    registry.write_text(json.dumps({"engines": [{"name": "v1-fp32", "device": MISSING}]}))
    out = _run(["-m", "abtest", "worker", "--engine", "v1-fp32"], _env(tmp_path, ABTEST_ENGINE_REGISTRY=str(registry)))
    assert out.returncode != 0
    assert "engine 'v1-fp32' (its spec's device)" in out.stderr and f"device {MISSING!r} is not available" in out.stderr
    assert "Traceback" not in out.stderr + out.stdout


def test_worker_cli_malformed_device(tmp_path) -> None:
    out = _run(["-m", "abtest", "worker", "--engine", "v1-fp32", "--device", "gpu"], _env(tmp_path))
    assert out.returncode != 0 and "invalid device 'gpu'" in out.stderr and "Traceback" not in out.stderr


def test_run_worker_exits_with_a_message(tmp_path) -> None:
    from abtest.config import Settings
    from workers.main import run_worker

    settings = Settings.load({"broker_url": "redis://127.0.0.1:6379/15", "checkpoint_dir": str(tmp_path / "ck")},
                             environ={})
    with pytest.raises(SystemExit) as info:
        run_worker("v1-fp32", device="cuda:x", settings=settings)
    assert "invalid device 'cuda:x'" in str(info.value.code)
    with pytest.raises(SystemExit) as info:
        run_worker("v2-int4", device=MISSING, settings=settings)
    assert f"device {MISSING!r} is not available" in str(info.value.code)
    with pytest.raises(SystemExit) as info:  # a usable device, but no checkpoint: named, with the fix
        run_worker("v2-int4", device="cpu", settings=settings)
    assert f"{tmp_path / 'ck' / 'v2-int4'} does not exist" in str(info.value.code)
    assert "abtest engines build-demo" in str(info.value.code)


# --- the engines benchmark -------------------------------------------------------------------

def test_engines_benchmark_rejects_a_missing_device_before_building(tmp_path) -> None:
    out = _run(["-m", "benchmarks.engines", "--quick", "--device", MISSING], _env(tmp_path))
    assert out.returncode == 2
    assert f"--device: device {MISSING!r} is not available" in out.stderr and MISSING_WHY in out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    assert not (tmp_path / "checkpoints").exists()  # nothing was built


def test_engines_benchmark_parse_args_checks_the_device() -> None:
    from benchmarks.engines import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--device", "cuda:x"])
    assert parse_args(["--device", "cpu"]).device == "cpu"
