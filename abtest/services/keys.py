"""API keys: created once, shown once, stored as SHA-256 hashes.

Keys look like ``abt_<43 url-safe characters>`` (256 random bits), so a fast hash is enough:
there is nothing to brute-force that a slow password hash would protect. Scopes: ``admin``
(everything), ``viewer`` (read-only: experiment list and show, reports, the audit log, and the
web console without its buttons) and ``sdk`` (assign, infer and events only).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..db import is_outage
from ..errors import NotFound, ValidationError
from ..models import ApiKey

__all__ = ["SCOPES", "Principal", "create_key", "list_keys", "revoke_key", "revoke_key_id", "hash_key", "KeyCache",
           "find_key", "key_by_id"]

SCOPES = ("admin", "viewer", "sdk")
# What each scope may do besides its own name: an admin key everything, a viewer key "viewer".
_GRANTS = {"admin": frozenset(SCOPES), "viewer": frozenset({"viewer"}), "sdk": frozenset({"sdk"})}
PREFIX = "abt_"


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name (recorded in the audit log) and its scope."""

    name: str
    scope: str

    def allows(self, scope: str) -> bool:
        """``admin`` allows everything; ``viewer`` the read-only (``viewer``) operations; ``sdk``
        the SDK's."""
        return scope in _GRANTS.get(self.scope, ())


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, name: str, scope: str, key: str | None = None) -> str:
    """Store a new key and return it in clear: the only time it is ever visible."""
    if scope not in SCOPES:
        raise ValidationError("scope", f"must be one of {', '.join(SCOPES)}")
    if not name.strip():
        raise ValidationError("name", "must not be empty")
    key = key or PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(name=name, scope=scope, key_hash=hash_key(key), prefix=key[:10],
                       created_at=datetime.now(timezone.utc), revoked_at=None))
    session.flush()
    return key


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, name_or_prefix: str) -> int:
    rows = session.scalars(
        select(ApiKey).where(
            ((ApiKey.name == name_or_prefix) | (ApiKey.prefix == name_or_prefix[:10]))
            & ApiKey.revoked_at.is_(None)
        )
    ).all()
    if not rows:
        raise NotFound(f"no active key named {name_or_prefix!r}")
    for row in rows:
        row.revoked_at = datetime.now(timezone.utc)
    return len(rows)


def revoke_key_id(session: Session, key_id: int) -> ApiKey:
    """Revoke the key with this id (NotFound when there is none or it is already revoked)."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None:
        raise NotFound(f"no active key with id {key_id}")
    row.revoked_at = datetime.now(timezone.utc)
    return row


def find_key(session: Session, key: str) -> ApiKey | None:
    """The active key row of this key in clear, or None (unknown or revoked)."""
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    return row if row is not None and row.revoked_at is None else None


def key_by_id(session: Session, key_id: int, hash_prefix: str) -> ApiKey | None:
    """The active key row with this id whose hash starts with ``hash_prefix``, or None: how a
    signed-in console session (which holds these two, never the key) is checked on each request,
    so a revoked key stops working at once."""
    row = session.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or not hash_prefix or not row.key_hash.startswith(hash_prefix):
        return None
    return row


class KeyCache:
    """Resolve keys to principals with a short TTL, so each request need not query the database.

    A revoked key stops working within ``ttl`` seconds in every process. While the database
    cannot be asked, a key resolved in the last ``ttl + grace`` seconds keeps its answer (so a
    key revoked just before an outage may work until the outage ends, ``grace`` at most); a key
    this process has not seen recently cannot be checked, and the request gets 503.
    """

    def __init__(self, ttl: float, grace: float = 0.0) -> None:
        self.ttl, self.grace = ttl, grace
        self._entries: dict[str, tuple[float, Principal | None]] = {}
        self._lock = threading.Lock()

    def clear(self) -> None:
        """Forget every cached answer (after a revocation: this process refuses the key at once)."""
        with self._lock:
            self._entries.clear()

    def resolve(self, session_factory, key: str) -> Principal | None:  # type: ignore[no-untyped-def]
        digest = hash_key(key)
        now = time.monotonic()
        with self._lock:
            hit = self._entries.get(digest)
        if hit is not None and now - hit[0] < self.ttl:
            return hit[1]
        try:
            with session_factory() as session:
                row = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        except Exception as exc:
            if hit is not None and is_outage(exc) and now - hit[0] < self.ttl + self.grace:
                return hit[1]
            raise
        principal = Principal(row.name, row.scope) if row is not None and row.revoked_at is None else None
        with self._lock:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[digest] = (now, principal)
        return principal
