"""The SDK definitions document (``GET /v1/sdk/definitions``), built once per ``ttl``.

Every experiment's assignment config and every layer's holdout share, serialized by :func:`abtest.client.definitions.document`
(the module the SDK reads it back with). Drafts and stopped experiments are included: the
server answers ``not_running`` for them, and so does a client evaluating locally. The
document's ``version`` is its ETag: a client that sends it back in ``If-None-Match`` gets 304.
"""

from __future__ import annotations

import json
import threading
import time

from ..client.definitions import document
from ..db import Database
from .experiments import list_experiments, to_config
from .layers import holdout_shares

__all__ = ["Definitions"]


class Definitions:
    def __init__(self, db: Database, ttl: float) -> None:
        self.db, self.ttl = db, ttl
        self._cached: tuple[float, str, bytes] | None = None
        self._lock = threading.Lock()

    def current(self) -> tuple[str, bytes]:
        """(version, JSON body) as of at most ``ttl`` seconds ago."""
        now = time.monotonic()
        cached = self._cached
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1], cached[2]
        with self.db.session() as session:
            shares = holdout_shares(session)
            doc = document(to_config(e, shares.get(e.layer or "", 0.0)) for e in list_experiments(session))
        body = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
        with self._lock:
            self._cached = (now, doc["version"], body)
        return doc["version"], body

    def invalidate(self) -> None:
        with self._lock:
            self._cached = None
