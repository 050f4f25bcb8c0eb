"""Console sign-in: the cookie's flags and contents, scopes, revocation, expiry, CSRF, and the
JSON API's indifference to the cookie."""

from __future__ import annotations

import base64
import json
import time
import zlib
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from itsdangerous import TimestampSigner

from abtest.app import create_app

from .conftest import new_key, sign_in, token


def _cookie_header(reply) -> str:  # type: ignore[no-untyped-def]
    headers = [h for h in reply.headers.getlist("Set-Cookie") if h.startswith("abtest_console=")]
    assert len(headers) == 1, reply.headers
    return headers[0]


def _payload(cookie: str) -> dict:
    """The session cookie's content: signed, not encrypted (base64 of JSON, zlib-compressed when
    the value starts with a dot, before the signature)."""
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    compressed = value.startswith(".")
    data = value.lstrip(".").split(".")[0]
    raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    return json.loads(zlib.decompress(raw) if compressed else raw)


def test_sign_in_sets_a_hardened_cookie_without_the_key(client, admin_key, services) -> None:
    assert client.get("/console/").status_code == 302  # signed out: to the sign-in page
    reply = sign_in(client, admin_key)
    assert reply.status_code == 302 and reply.headers["Location"].endswith("/console/")
    cookie = _cookie_header(reply)
    flags = [part.strip().lower() for part in cookie.split(";")[1:]]
    assert "httponly" in flags and "samesite=lax" in flags and "path=/console" in flags
    assert "secure" not in flags  # plain HTTP, setting off
    expires = parsedate_to_datetime(next(p for p in cookie.split(";") if p.strip().lower().startswith("expires"))
                                    .split("=", 1)[1])
    hours = (expires - datetime.now(timezone.utc)).total_seconds() / 3600
    assert 11.9 < hours <= 12.0  # ABTEST_CONSOLE_SESSION_HOURS defaults to 12
    content = _payload(cookie)
    assert admin_key not in cookie and admin_key not in json.dumps(content)
    assert set(content) >= {"key_id", "key_hash", "sid"} and len(content["key_hash"]) == 16
    assert client.get("/console/").status_code == 200


def test_secure_cookie_by_setting_and_over_tls(db_url, tmp_path, admin_key) -> None:
    app = create_app({"database_url": db_url, "preload_engines": False, "guardrail_interval_s": 0.0,
                      "checkpoint_dir": str(tmp_path / "ck"), "secret_key": "s" * 32,
                      "console_secure_cookie": True, "console_session_hours": 2})
    try:
        reply = sign_in(app.test_client(), admin_key)
        cookie = _cookie_header(reply)
        assert "secure" in [p.strip().lower() for p in cookie.split(";")]
        expires = parsedate_to_datetime(cookie.split("Expires=")[1].split(";")[0])
        assert 1.9 < (expires - datetime.now(timezone.utc)).total_seconds() / 3600 <= 2.0
    finally:
        app.extensions["abtest"].close()


def test_a_tls_request_gets_a_secure_cookie_without_the_setting(client, admin_key) -> None:
    tls = {"base_url": "https://localhost"}
    page = client.get("/console/signin", **tls).get_data(as_text=True)
    csrf = page.split('name="csrf_token" type="hidden" value="')[1].split('"')[0]
    reply = client.post("/console/signin", data={"csrf_token": csrf, "key": admin_key}, **tls)
    assert reply.status_code == 400  # over HTTPS the form's page must be the Referer too
    reply = client.post("/console/signin", data={"csrf_token": csrf, "key": admin_key},
                        headers={"Referer": "https://localhost/console/signin"}, **tls)
    assert reply.status_code == 302
    assert "secure" in [p.strip().lower() for p in _cookie_header(reply).split(";")]


def test_sdk_keys_and_bad_keys_cannot_sign_in(client, services) -> None:
    reply = sign_in(client, new_key(services, "sdk"))
    assert reply.status_code == 401 and "sdk key cannot sign in" in reply.get_data(as_text=True)
    reply = sign_in(client, "abt_not-a-key")
    assert reply.status_code == 401 and "unknown or revoked" in reply.get_data(as_text=True)
    assert client.get("/console/").status_code == 302


def test_a_revoked_key_is_signed_out_at_once(console, services) -> None:
    from abtest.services.keys import revoke_key

    assert console.get("/console/").status_code == 200
    with services.db.transaction() as session:
        revoke_key(session, "ops")
    reply = console.get("/console/")
    assert reply.status_code == 302 and "/console/signin" in reply.headers["Location"]
    assert console.get("/console/?format=json").status_code == 401


def test_an_expired_session_is_refused(client, admin_key, monkeypatch) -> None:
    real = TimestampSigner.get_timestamp
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - 13 * 3600)
    assert sign_in(client, admin_key).status_code == 302  # signed 13 hours ago, as far as the cookie says
    monkeypatch.setattr(TimestampSigner, "get_timestamp", real)
    reply = client.get("/console/")
    assert reply.status_code == 302 and "/console/signin" in reply.headers["Location"]


def test_sign_out_ends_the_session_and_every_copy_of_its_cookie(console, app, admin_key) -> None:
    copy = console.get_cookie("abtest_console", path="/console").value
    other = app.test_client()  # a second sign-in of the same key is a session of its own
    assert sign_in(other, admin_key).status_code == 302
    reply = console.post("/console/signout", data={"csrf_token": token(console, "/console/")})
    assert reply.status_code == 302
    assert console.get("/console/").status_code == 302
    stolen = app.test_client()
    stolen.set_cookie("abtest_console", copy, path="/console")
    assert stolen.get("/console/?format=json").status_code == 401
    assert other.get("/console/?format=json").status_code == 200


def test_a_post_without_the_csrf_token_is_refused(console, services) -> None:
    for path, data in (("/console/signout", {}), ("/console/keys", {"name": "x", "scope": "admin"}),
                       ("/console/new", {"key": "nope", "name": "n"})):
        reply = console.post(path, data=data)
        assert reply.status_code == 400, path
        assert "security token" in reply.get_data(as_text=True)
        reply = console.post(path, data={**data, "csrf_token": "forged"})
        assert reply.status_code == 400, path
    assert console.get("/console/").status_code == 200  # still signed in: the sign-out was refused
    with services.db.session() as session:
        from abtest.services.keys import list_keys

        assert [k.name for k in list_keys(session)] == ["ops"]


def test_the_json_api_ignores_the_console_cookie(console, app) -> None:
    cookie = console.get_cookie("abtest_console", path="/console")
    assert cookie is not None
    bare = app.test_client()
    bare.set_cookie("abtest_console", cookie.value, path="/")
    reply = bare.get("/v1/experiments")
    assert reply.status_code == 401 and reply.get_json()["error"]["code"] == "unauthorized"
    assert bare.get("/console/").status_code == 200  # the same cookie is a valid console session
