"""Database access without Flask: engine, sessions, transactions and migrations."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, func, inspect
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

__all__ = ["Database", "alembic_config", "upgrade", "downgrade", "MIGRATIONS_DIR", "is_outage", "merging_upsert"]

log = logging.getLogger(__name__)

def _migrations_dir() -> Path:
    """``migrations/`` beside the package (a checkout), else in the working directory (an image)."""
    beside = Path(__file__).resolve().parent.parent / "migrations"
    return beside if beside.is_dir() else Path.cwd() / "migrations"


MIGRATIONS_DIR = _migrations_dir()


class Database:
    """One SQLAlchemy engine and session factory for a database URL.

    ``transaction()`` is the unit of work: one transaction per write, committed on success
    and rolled back on any exception, so a rejected request writes nothing.

    Faults are bounded: PostgreSQL connections time out connecting (``connect_timeout_s``)
    and per statement (``statement_timeout_s``, enforced by the server), a request waits at
    most ``pool_timeout_s`` for a pooled connection, and :meth:`abort_connections` shuts the
    socket of every open connection once the database is known to be down, so the threads
    stuck on a server that hangs (and so enforces nothing) get an error instead of waiting for
    ever.
    """

    def __init__(self, url: str, *, pool_size: int = 10, connect_timeout_s: float = 2.0,
                 statement_timeout_s: float = 10.0, pool_timeout_s: float = 1.0) -> None:
        self.url = url
        self.engine = make_engine(url, pool_size=pool_size, connect_timeout_s=connect_timeout_s,
                                  statement_timeout_s=statement_timeout_s, pool_timeout_s=pool_timeout_s)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._open: weakref.WeakSet = weakref.WeakSet()  # every DBAPI connection of the pools
        self._open_lock = threading.Lock()
        self._refuse: Callable[[], str | None] = lambda: None
        # pings get a connection of their own, never refused and never waiting behind requests
        self._ping_engine = make_engine(url, pool_size=1, connect_timeout_s=connect_timeout_s,
                                        statement_timeout_s=statement_timeout_s, pool_timeout_s=pool_timeout_s)
        if self.engine.dialect.name == "postgresql":
            for engine in (self.engine, self._ping_engine):
                event.listen(engine, "connect", self._on_connect)
            event.listen(self.engine, "do_connect", self._gate_connect)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    @contextlib.contextmanager
    def session(self) -> Iterator[Session]:
        with self.sessions() as session:
            yield session

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def is_empty(self) -> bool:
        return not inspect(self.engine).get_table_names()

    def ping(self) -> None:
        with self._ping_engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

    def refuse_connects_while(self, reason: Callable[[], str | None]) -> None:
        """New connections for requests fail at once while ``reason()`` is not None (the
        database is known to be down), instead of each waiting its connect timeout."""
        self._refuse = reason

    def _gate_connect(self, dialect, _record, _cargs, _cparams):  # type: ignore[no-untyped-def]
        reason = self._refuse()
        if reason is not None:
            raise dialect.loaded_dbapi.OperationalError(f"not connecting: the database is down ({reason})")
        return None  # connect as usual

    def _on_connect(self, dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        with self._open_lock:
            self._open.add(dbapi_conn)

    def on_outage(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` whenever a statement or a connect fails for an outage."""

        def handle_error(context) -> None:  # type: ignore[no-untyped-def]
            if context.is_pre_ping:
                return  # a stale pooled connection: the pool replaces it, the database may be fine
            if is_outage(context.sqlalchemy_exception) or context.is_disconnect:
                callback(f"{type(context.original_exception).__name__}: "
                         f"{str(context.original_exception).splitlines()[0][:200]}")

        event.listen(self.engine, "handle_error", handle_error)

    def abort_connections(self) -> int:
        """Shut the socket of every open connection: the threads waiting on them get an
        OperationalError now, and SQLAlchemy discards the connections. Called while the
        database is known to be down (nothing sent on them can be answered); returns how many."""
        with self._open_lock:
            conns = list(self._open)
        shut = 0
        for conn in conns:
            try:
                fd = conn.pgconn.socket
                sock = socket.socket(fileno=os.dup(fd))
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                finally:
                    sock.close()
                shut += 1
            except Exception:  # noqa: BLE001 - already closed
                continue
        if shut:
            log.warning("database down: shut %d open connection(s)", shut)
        return shut

    def dispose(self) -> None:
        self.engine.dispose()
        self._ping_engine.dispose()


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means the database cannot be reached (as opposed to a bad statement or row)."""
    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
    from sqlalchemy.exc import TimeoutError as PoolTimeout

    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def make_engine(url: str, *, pool_size: int = 10, connect_timeout_s: float = 2.0,
                statement_timeout_s: float = 10.0, pool_timeout_s: float = 1.0) -> Engine:
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, object] = {}
    if url.startswith("postgresql"):
        # libpq's connect_timeout is whole seconds, at least 2; 0 turns a timeout off.
        if connect_timeout_s > 0:
            connect_args["connect_timeout"] = max(2, math.ceil(connect_timeout_s))
        if statement_timeout_s > 0:
            connect_args["options"] = f"-c statement_timeout={int(statement_timeout_s * 1000)}"
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                         pool_timeout=pool_timeout_s, connect_args=connect_args)


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    # WAL lets readers run beside the single writer; foreign keys are off by default in SQLite.
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[-1]
    if path and path != ":memory:" and not path.startswith("file:"):
        Path(path).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    if url.startswith("sqlite"):
        _ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    command.downgrade(alembic_config(url), revision)


def merging_upsert(model, dialect: str):  # type: ignore[no-untyped-def]
    """INSERT of rows of ``model`` (keyed by experiment, phase and unit, with ``count`` and
    ``last_seen``) that merges into existing ones: the count adds up, ``last_seen`` moves on."""
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stmt = insert(model)
    table = model.__table__
    latest = func.max if dialect == "sqlite" else func.greatest
    return stmt.on_conflict_do_update(
        index_elements=["experiment_id", "phase", "unit_id"],
        set_={"last_seen": latest(table.c.last_seen, stmt.excluded.last_seen),
              "count": table.c.count + stmt.excluded.count},
    )
