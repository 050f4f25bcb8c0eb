"""Web console sessions: each sign-in gets a random id (kept in the signed cookie); signing
out records the id until the cookie would have expired, so a copy of the cookie taken before
the sign-out is refused too. No HTTP here."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta, timezone

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from ..models import ConsoleSignout

__all__ = ["new_session_id", "sign_out", "is_signed_out"]


def new_session_id() -> str:
    return secrets.token_hex(16)


def sign_out(session: Session, session_id: str, lifetime: timedelta) -> None:
    """Refuse ``session_id`` from now on (idempotent), and forget sign-outs whose cookies expired."""
    now = datetime.now(timezone.utc)
    session.execute(delete(ConsoleSignout).where(ConsoleSignout.expires_at < now))
    if session.get(ConsoleSignout, session_id) is None:
        session.add(ConsoleSignout(session_id=session_id, signed_out_at=now, expires_at=now + lifetime))
    session.flush()


def is_signed_out(session: Session, session_id: str) -> bool:
    return session.scalar(select(ConsoleSignout.session_id).where(ConsoleSignout.session_id == session_id)) is not None
