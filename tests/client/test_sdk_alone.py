"""The SDK installs alone: ``pip install abtest`` (no extras) into a fresh virtual environment
brings httpx and nothing of the server, and that install talks to a live server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, select

from abtest.testing import running_server
from abtest.models import Event, Exposure, RequestLog
from tests.conftest import experiment_payload

REPO = Path(__file__).resolve().parents[2]
SERVER_ONLY = ("flask", "sqlalchemy", "torch", "celery", "alembic", "numpy")
# httpx and what it depends on (across its supported versions), plus the venv's own tools.
HTTPX_CLOSURE = {"abtest", "httpx", "httpcore", "h11", "anyio", "idna", "certifi", "sniffio",
                 "typing-extensions", "exceptiongroup", "pip", "setuptools"}

# Runs with the fresh venv's python: assign, infer, track + flush through the installed SDK.
SCRIPT = textwrap.dedent("""
    import json, sys
    from abtest.client import Client

    base_url, key = sys.argv[1], sys.argv[2]
    with Client(base_url, key, timeout=60) as client:
        assigned = client.assign("sdk-alone", "user-1")
        result = client.infer("sdk-alone", "user-1", "def parse(", max_new_tokens=4, seed=1)
        event_id = client.track("user-1", "purchase", value=2.5, request_id=result.request_id)
        flushed = client.flush(timeout=30)
        stats = client.stats
    print(json.dumps({"variant": assigned.variant, "infer_variant": result.variant,
                      "request_id": result.request_id, "event_id": event_id, "flushed": flushed,
                      "sent": stats.sent, "dropped": stats.dropped, "rejected": stats.rejected}))
""")


def _copy_source(dest: Path) -> Path:
    """The distribution's inputs (what ``pip install <repo>`` builds), copied so that the
    in-tree build leaves no build/ or egg-info behind in the working tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    dest.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    for package in ("abtest", "engines", "workers", "benchmarks"):
        shutil.copytree(REPO / package, dest / package, ignore=ignore)
    return dest


def _run(cmd: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run outside the repository (``python -c`` puts the working directory on sys.path) and
    without the main venv's PYTHONPATH, so only what the fresh venv installed is importable."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    assert out.returncode == 0, f"{cmd} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.mark.slow
def test_sdk_installs_alone_and_talks_to_a_live_server(tmp_path: Path, tiny_registry: str) -> None:
    venv = tmp_path / "sdk-venv"
    _run([sys.executable, "-m", "venv", str(venv)], 60, tmp_path)
    python = str(venv / "bin" / "python")
    # No extras: the base install must be the client with httpx only. pip's build isolation
    # fetches the build backend (setuptools) from the index.
    _run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input",
          str(_copy_source(tmp_path / "src"))], 240, tmp_path)

    probe = _run([python, "-c", (
        "import importlib.metadata, importlib.util, json, sys\n"
        "import abtest.client\n"
        f"absent = [m for m in {SERVER_ONLY!r} if importlib.util.find_spec(m) is None]\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('abtest') and not m.startswith('abtest.client')"
        " and m != 'abtest')\n"
        "dists = sorted({d.metadata['Name'].lower().replace('_', '-') for d in importlib.metadata.distributions()})\n"
        "print(json.dumps({'absent': absent, 'loaded': loaded, 'file': abtest.client.__file__, 'dists': dists}))\n"
    )], 60, tmp_path)
    found = json.loads(probe.stdout)
    print("SDK-alone venv:", probe.stdout.strip())
    assert found["absent"] == list(SERVER_ONLY), f"server dependencies installed with the SDK: {found}"
    assert found["loaded"] == [] and str(venv) in found["file"]
    assert set(found["dists"]) <= HTTPX_CLOSURE, f"installed beyond httpx: {set(found['dists']) - HTTPX_CLOSURE}"

    db = f"sqlite:///{tmp_path / 'server.sqlite'}"
    env = {"ABTEST_DATABASE_URL": db, "ABTEST_ENGINE_REGISTRY": tiny_registry}
    with running_server(env=env) as (base_url, key):
        headers = {"Authorization": f"Bearer {key}"}
        httpx.post(f"{base_url}/v1/experiments", json=experiment_payload("sdk-alone"),
                   headers=headers).raise_for_status()
        httpx.post(f"{base_url}/v1/experiments/sdk-alone/start", headers=headers).raise_for_status()
        out = _run([python, "-c", SCRIPT, base_url, key], 120, tmp_path)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    print("SDK-alone script:", json.dumps(result))
    assert result["variant"] in {"control", "treatment"} and result["infer_variant"] == result["variant"]
    assert result["flushed"] is True and (result["sent"], result["dropped"], result["rejected"]) == (1, 0, 0)

    engine = create_engine(db)
    try:
        with engine.connect() as conn:
            exposure = conn.execute(select(Exposure.variant).where(Exposure.unit_id == "user-1")).all()
            request = conn.execute(select(RequestLog.variant, RequestLog.status)
                                   .where(RequestLog.request_id == result["request_id"])).all()
            event = conn.execute(select(Event.name, Event.value, Event.request_id)
                                 .where(Event.event_id == result["event_id"])).all()
    finally:
        engine.dispose()
    assert [tuple(r) for r in exposure] == [(result["variant"],)]
    assert [tuple(r) for r in request] == [(result["variant"], "ok")]
    assert [tuple(r) for r in event] == [("purchase", 2.5, result["request_id"])]


def test_distribution_metadata_splits_sdk_and_server() -> None:
    """Base dependencies are httpx only; the server's live in the ``server`` extra, torch pinned."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0].split("=")[0] for d in project["dependencies"]] == ["httpx"]
    extra = project["optional-dependencies"]["server"]
    server = {d.split(">")[0].split("=")[0].split("[")[0].lower(): d for d in extra}
    assert {"flask", "sqlalchemy", "alembic", "celery", "torch", "gunicorn", "click"} <= set(server)
    assert server["torch"] == "torch==2.13.0"  # a loose range pulls a multi-GB CUDA build
