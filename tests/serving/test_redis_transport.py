"""The Celery wiring's Redis transport (one client per channel) and what a task message shows,
on the real test Redis."""

from __future__ import annotations

import base64
import json

import redis

from abtest.config import Settings
from workers.celery_app import make_celery, queue_name
from workers.celery_dispatch import CeleryDispatcher
from workers.presence import Heartbeat


def test_a_channel_reuses_one_client_until_its_pool_is_replaced(redis_url) -> None:
    from workers.redis_transport import Channel

    app = make_celery(Settings(broker_url=redis_url), publisher=True)
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        assert isinstance(channel, Channel)
        with channel.conn_or_acquire() as a, channel.conn_or_acquire() as b:
            assert a is b and a.connection_pool is channel.pool
        old = a
        channel._pool = None  # what kombu does after a lost connection (_disconnect_pools)
        with channel.conn_or_acquire() as c:
            assert c is not old and c.connection_pool is channel.pool
            assert c.ping()
        with conn.SimpleQueue("transport-test") as q:  # a publish and a consume through it
            q.put({"n": 1})
            message = q.get(timeout=5)
            assert message.payload == {"n": 1}
            message.ack()


def test_other_broker_schemes_keep_kombus_transport() -> None:
    app = make_celery(Settings(broker_url="rediss://127.0.0.1:6390/0"), publisher=True)
    assert not app.conf.broker_transport


def _sent_message(redis_url: str, log_content: bool) -> dict:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    beat = Heartbeat(redis_url, "test-worker", [queue_name("v2-int4")]).start()
    dispatcher = CeleryDispatcher(Settings(broker_url=redis_url, log_content=log_content))
    try:
        dispatcher.submit("v2-int4", "req-1", {"prompt": "a secret prompt", "max_new_tokens": 2}, timeout=5.0)
        raw = client.lpop(queue_name("v2-int4"))
        assert raw is not None
        return json.loads(raw)
    finally:
        dispatcher.close()
        beat.stop()


def test_a_task_message_shows_the_request_not_its_prompt(redis_url) -> None:
    message = _sent_message(redis_url, log_content=False)
    assert "secret" not in message["headers"]["argsrepr"] and "req-1" in message["headers"]["argsrepr"]
    body = json.loads(base64.b64decode(message["body"]))
    assert body[0][2]["prompt"] == "a secret prompt"  # the worker still gets the whole request
    assert "secret" in _sent_message(redis_url, log_content=True)["headers"]["argsrepr"]  # when asked to
