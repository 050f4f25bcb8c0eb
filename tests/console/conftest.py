"""Console fixtures: a signed-in test client per scope, and the CSRF token of a page."""

from __future__ import annotations

import re
from typing import Any

import pytest

from abtest.services.keys import create_key

TOKEN = re.compile(r'name="csrf_token"(?: type="hidden")? value="([^"]+)"')


def token(client: Any, path: str = "/console/signin") -> str:
    """The CSRF token that a form of ``path`` carries."""
    reply = client.get(path)
    found = TOKEN.search(reply.get_data(as_text=True))
    assert found is not None, f"no CSRF token on {path} ({reply.status_code})"
    return found.group(1)


def new_key(services: Any, scope: str, name: str | None = None) -> str:
    with services.db.transaction() as session:
        return create_key(session, name or f"console-{scope}", scope)


def sign_in(client: Any, key: str) -> Any:
    return client.post("/console/signin", data={"csrf_token": token(client), "key": key})


@pytest.fixture
def admin_key(services: Any) -> str:
    return new_key(services, "admin", "ops")


@pytest.fixture
def console(client: Any, admin_key: str) -> Any:
    """A test client signed in to the console with an admin key."""
    reply = sign_in(client, admin_key)
    assert reply.status_code == 302, reply.get_data(as_text=True)
    return client


@pytest.fixture
def viewer(app: Any, services: Any) -> Any:
    """Another test client, signed in with a viewer key."""
    other = app.test_client()
    assert sign_in(other, new_key(services, "viewer", "looker")).status_code == 302
    return other
