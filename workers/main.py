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
from engines.spec import load_registry

from . import tasks
from .celery_app import make_celery, queue_name
from .host import EngineHost

__all__ = ["run_worker"]

log = logging.getLogger(__name__)


def run_worker(engine: str, *, device: str | None = None, concurrency: int | None = None,
               settings: Settings | None = None, loglevel: str = "INFO") -> None:
    settings = settings or Settings.load()
    specs = load_registry(settings.engine_registry, settings.checkpoint_dir)
    if engine not in specs:
        raise SystemExit(f"unknown engine {engine!r}; registered: {', '.join(sorted(specs))}")
    app = make_celery(settings)
    host = EngineHost({engine: specs[engine]}, device=device)
    host.preload(engine)
    tasks.HOST = host
    worker_shutting_down.connect(lambda **_: host.close(), weak=False)
    threads = concurrency or min(specs[engine].max_batch_size, 64)
    app.worker_main([
        "worker", "--queues", queue_name(engine), "--pool", "threads", "--concurrency", str(threads),
        "--prefetch-multiplier", "1", "--hostname", f"{engine}-{os.getpid()}@%h",
        "--without-gossip", "--without-mingle", "--loglevel", loglevel,
    ])
