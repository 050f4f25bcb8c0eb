"""What the ``abtest`` commands share: exit statuses for service errors, the database of the
settings, JSON in and out, and the actor recorded in the audit log.

Exit status: 0 done; 2 bad input, nothing written (:class:`InputError`: a validation error
prints ``field: message``, as the API's 422 does); 1 any other refusal. Only click and the
standard library load with the module, so ``abtest --help`` stays fast.
"""

from __future__ import annotations

import contextlib
import getpass
import json
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import click

from .config import Settings
from .errors import ABTestError, BadRequest, ValidationError

if TYPE_CHECKING:
    from .db import Database

__all__ = ["InputError", "reported", "database", "read_json", "print_json", "actor"]


class InputError(click.ClickException):
    """Bad input (nothing written): exit status 2, as for click's own usage errors."""

    exit_code = 2


@contextlib.contextmanager
def reported() -> Iterator[None]:
    """Service errors as CLI errors: bad input exits 2 with ``field: message``, the rest 1."""
    try:
        yield
    except (ValidationError, BadRequest) as exc:
        raise InputError(exc.message) from None
    except ABTestError as exc:
        raise click.ClickException(f"{exc.code}: {exc.message}") from None


@contextlib.contextmanager
def database(settings: Settings | None = None) -> Iterator[Database]:
    """The database of ``settings`` (default: loaded now), disposed when the command is done."""
    from .db import Database

    db = Database((settings or Settings.load()).database_url)
    try:
        yield db
    finally:
        db.dispose()


def read_json(stream: IO[str]) -> Any:
    try:
        return json.load(stream)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{getattr(stream, 'name', '-')}: not valid JSON ({exc})") from None


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


def actor(given: str | None) -> str:
    """``--actor`` as given (checked like any stored text), else ``cli:<OS user>``."""
    if given is None:
        try:
            return f"cli:{getpass.getuser()}"
        except (KeyError, OSError):  # no login name in this environment (some containers)
            return "cli:unknown"
    from .validation import Fields

    return Fields({"actor": given}, ["actor"]).str("actor", max_len=200)
