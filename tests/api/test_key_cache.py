"""API keys while the database cannot be asked: a bounded grace for keys seen recently."""

from __future__ import annotations

import time

import pytest
from sqlalchemy.exc import OperationalError

from abtest.db import Database
from abtest.services.keys import KeyCache, create_key, revoke_key


def test_cached_keys_survive_an_outage_for_the_grace_only(sqlite_url) -> None:
    good = Database(sqlite_url)
    down = Database("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_timeout_s=2)  # nothing listens
    try:
        with good.transaction() as session:
            known = create_key(session, "grace-known", "sdk")
            unseen = create_key(session, "grace-unseen", "sdk")
        cache = KeyCache(ttl=0.05, grace=0.5)
        assert cache.resolve(good.session, known).name == "grace-known"
        with good.transaction() as session:
            revoke_key(session, "grace-known")  # revoked just before the outage
        time.sleep(0.1)  # past the TTL: a live database would now say "revoked"
        assert cache.resolve(down.session, known).name == "grace-known"  # the grace: documented
        with pytest.raises(OperationalError):
            cache.resolve(down.session, unseen)  # never seen here: cannot be checked (503)
        time.sleep(0.5)  # past TTL + grace
        with pytest.raises(OperationalError):
            cache.resolve(down.session, known)
        assert cache.resolve(good.session, known) is None  # back: the revocation holds at once
    finally:
        good.dispose()
        down.dispose()
