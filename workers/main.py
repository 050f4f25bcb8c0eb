"""``abtest worker --engine NAME``: a Celery worker that serves one engine's queue.

The engine is loaded once in this process before the worker consumes anything. The pool is
threads (no fork after torch's thread pool started); each thread submits to the engine's
batching scheduler, so concurrent tasks are batched together.
"""

from __future__ import annotations

import logging
import os

from celery.signals import worker_shutting_down

from abtest.config import Settings
from engines.device import DeviceError, check_device
from engines.spec import check_checkpoint, load_registry
from engines.types import EngineError

from . import tasks
from .celery_app import make_celery, queue_name
from .host import EngineHost
from .redis_streams import StreamHub

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


def run_worker(engine: str, *, device: str | None = None, concurrency: int | None = None,
               settings: Settings | None = None, loglevel: str = "INFO") -> None:
    """Load ``engine`` (on ``device``, else its spec's device), then consume its queue.

    Start-up problems (an unknown engine, a device this machine lacks, a missing checkpoint)
    exit with a one-line message (SystemExit, status 1) before the worker connects anywhere.
    """
    if device is not None:
        _check_device(device, "--device")
    settings = settings or Settings.load()
    try:
        specs = load_registry(settings.engine_registry, settings.checkpoint_dir)
    except ValueError as exc:
        raise SystemExit(f"abtest worker: {exc}") from None
    if engine not in specs:
        raise SystemExit(f"unknown engine {engine!r}; registered: {', '.join(sorted(specs))}")
    if device is None:
        _check_device(specs[engine].device, f"engine {engine!r} (its spec's device)")
    try:
        check_checkpoint(specs[engine])
    except FileNotFoundError as exc:
        raise SystemExit(f"abtest worker: {exc}") from None
    app = make_celery(settings)
    host = EngineHost({engine: specs[engine]}, device=device)
    try:
        host.preload(engine)
    except EngineError as exc:
        raise SystemExit(f"abtest worker: {exc}") from None
    tasks.STREAMS = StreamHub(settings.result_backend or settings.broker_url or "")
    tasks.HOST = host
    worker_shutting_down.connect(lambda **_: host.close(), weak=False)
    threads = concurrency or min(specs[engine].max_batch_size, 64)
    app.worker_main([
        "worker", "--queues", queue_name(engine), "--pool", "threads", "--concurrency", str(threads),
        "--prefetch-multiplier", "1", "--hostname", f"{engine}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", loglevel,
    ])


def _check_device(device: str, where: str) -> None:
    try:
        check_device(device)
    except DeviceError as exc:
        raise SystemExit(f"abtest worker: {where}: {exc}") from None
