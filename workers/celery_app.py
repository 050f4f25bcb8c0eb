"""The one Celery app: Redis broker and result backend, one queue per engine.

Settings a GPU worker needs, and why:
    task_acks_late + task_reject_on_worker_lost
        a message is acknowledged only after its task finished, so a worker killed mid-task
        hands the message back to the queue. The task is idempotent (its id is the request
        id, its result is keyed by it, and the outcome row is written by the API with
        ON CONFLICT DO NOTHING), so a redelivery can never double-count.
    expires (set per message by the dispatcher)
        a redelivered or long-queued message whose caller already gave up is dropped
        unexecuted instead of burning GPU time.
    worker_prefetch_multiplier = 1
        a worker reserves no more messages than it has threads; the rest stay in Redis for
        other workers of the same engine (fair load sharing, nothing stranded on a dead one).
    visibility_timeout
        how long Redis waits before redelivering an unacknowledged message; it must exceed
        the longest task (the inference timeout plus queueing), or a slow task runs twice.
    socket timeouts of 1 s (0.5 s for the API's publishes)
        an unreachable or hung broker fails a publish fast (the API answers 503 instead of
        hanging); a healthy Redis answers in milliseconds.
    task time limit
        workers use the threads pool (one engine and one batching scheduler per process), where
        Celery cannot enforce ``task_time_limit`` (it needs a child process to kill). Each task
        carries the caller's deadline instead and stops waiting for the engine at it, answering
        ``engine_timeout``; the engine's scheduler finishes or drops the work on its own.
    reconnects every 0.2-0.5 s
        a worker that lost the broker retries at kombu's default 2, 4, 6 ... s, so a broker back
        after 2 s found it waiting 4 s more; ours retry quickly, and are back within a second.
    one Redis client per channel (:mod:`workers.redis_transport`)
        kombu builds a new ``redis.Redis`` for every publish and acknowledgement; ours reuse one.
    heartbeats
        Redis has no AMQP heartbeats; ``health_check_interval`` pings idle connections so a dead
        broker connection is noticed and re-established. Apart from those, each worker beats
        into Redis once a second on the queues it consumes (:mod:`workers.presence`): the API
        answers 503 at once for an engine whose queue nobody consumes.
    logging
        a worker logs through the service's own set-up (``ABTEST_LOG_FORMAT``; JSON lines
        without Celery's banner in JSON mode), and its task lines carry neither the task's
        arguments (the prompt) nor its result (the generated text) unless ``ABTEST_LOG_CONTENT=1``.
"""

from __future__ import annotations

from celery import Celery
from kombu import Connection

from abtest.config import Settings

__all__ = ["make_celery", "queue_name", "TASK_NAME"]

TASK_NAME = "abtest.generate"


def queue_name(engine: str) -> str:
    return f"engine.{engine}"


class QuickReconnect(Connection):
    """A kombu connection that retries a lost broker every 0.2-0.5 s instead of 2, 4, 6 ... s."""

    def ensure_connection(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        kwargs.setdefault("interval_start", 0.2)
        kwargs.setdefault("interval_step", 0.1)
        kwargs.setdefault("interval_max", 0.5)
        return super().ensure_connection(*args, **kwargs)


def make_celery(settings: Settings, *, publisher: bool = False) -> Celery:
    """The Celery app of a worker, or with ``publisher`` the API's: it only sends tasks (results
    come through :class:`workers.celery_dispatch.ResultListener`), so it has no result backend, which
    would subscribe to every task's channel while sending and hang with a hung broker, and a
    hung broker fails its publish within half a second."""
    if not settings.broker_url:
        raise ValueError("ABTEST_BROKER_URL is not set: Celery mode needs a Redis broker")
    backend = None if publisher else settings.result_backend or settings.broker_url
    app = Celery("abtest", broker=settings.broker_url, backend=backend)
    visibility = max(300, int(settings.infer_timeout_s * 4))
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_queue="abtest.default",
        task_publish_retry=False,
        broker_connection_timeout=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"visibility_timeout": visibility, "socket_connect_timeout": 1,
                                  "socket_timeout": 5, "health_check_interval": 10},
        redis_socket_connect_timeout=1,
        redis_socket_timeout=5,
        redis_backend_health_check_interval=10,
        result_expires=max(600, visibility),
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
    )
    app.amqp.Connection = QuickReconnect
    if settings.broker_url.startswith("redis://"):  # not rediss:// (TLS) or sentinel://: kombu's own
        app.conf.broker_transport = "workers.redis_transport:Transport"
    if publisher:
        app.conf.broker_transport_options = {**app.conf.broker_transport_options, "socket_timeout": 0.5}
    app.conf.imports = ("workers.tasks",)
    if not publisher:
        _worker_side(app, settings)
    return app


def _worker_side(app: Celery, settings: Settings) -> None:
    """A worker's logging and its heartbeat on the queues it consumes."""
    import logging

    from celery.signals import setup_logging, worker_ready, worker_shutting_down

    from abtest.logs import configure_logging

    from .presence import Heartbeat

    def logs(loglevel: object = None, **_: object) -> None:
        level = logging.getLevelName(loglevel) if isinstance(loglevel, int) else (loglevel or settings.log_level)
        configure_logging(str(level), settings.log_format, content=settings.log_content)

    beats: list[Heartbeat] = []

    def ready(sender: object = None, **_: object) -> None:
        consumer = getattr(sender, "task_consumer", None)
        queues = [q.name for q in getattr(consumer, "queues", None) or app.amqp.queues.consume_from.values()]
        hostname = str(getattr(sender, "hostname", None) or "worker")
        beats.append(Heartbeat(settings.broker_url or "", hostname, queues).start())

    def shutting_down(**_: object) -> None:
        while beats:
            beats.pop().stop()

    setup_logging.connect(logs, weak=False, dispatch_uid="abtest.logs")
    if settings.log_format == "json":  # now: Celery warns (e.g. about running as root) before it sets up logging
        logs(settings.log_level)
    worker_ready.connect(ready, weak=False, dispatch_uid="abtest.heartbeat.start")
    worker_shutting_down.connect(shutting_down, weak=False, dispatch_uid="abtest.heartbeat.stop")
    if settings.log_format == "json":  # Celery's banner is plain text on stdout: leave it out
        base = app.Worker

        class QuietWorker(base):  # type: ignore[misc,valid-type]
            def on_before_init(self, quiet: bool = False, **kwargs: object) -> None:
                super().on_before_init(quiet=True, **kwargs)

        app.Worker = QuietWorker  # type: ignore[misc]
