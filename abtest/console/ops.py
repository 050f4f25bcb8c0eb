"""The engines page (registry, queues, workers, the last hour's traffic) and the keys page."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import flash, g, redirect, request, url_for

from ..api.common import services
from ..errors import Forbidden, ValidationError
from ..services.keys import create_key, list_keys, revoke_key_id
from ..services.overview import engine_activity
from .blueprint import bp, page, principal
from .forms import KeyForm, RevokeForm

__all__: list[str] = []

_SPEC_FIELDS = ("precision", "attention", "context_window", "device", "max_batch_size", "max_wait_ms",
                "max_queue", "cost_per_hour", "description")


@bp.get("/engines")
def engines() -> Any:
    svc = services()
    specs = svc.is_engine.specs()
    _, checks = svc.health()
    states = checks.get("engines", {})
    problems = checks.get("engine_problems", {})
    depths: dict[str, int] = {}
    seen: dict[str, int | None] = {}
    try:
        dispatcher = svc.inference.dispatcher
        depths = dict(dispatcher.queue_depths())
        seen = dict(getattr(dispatcher, "workers_seen", dict)())
    except Exception:  # noqa: BLE001 - the broker cannot say now: /healthz's checks (shown) say why
        pass
    with svc.db.session() as session:
        activity = engine_activity(session, timedelta(hours=1))
    rows = []
    for name in sorted(specs):
        spec = specs[name]
        recent = activity.get(name)
        rows.append({"name": name, **{f: getattr(spec, f, None) for f in _SPEC_FIELDS},
                     "state": states.get(name, "unknown"), "problem": problems.get(name),
                     "queue_depth": depths.get(name), "workers": seen.get(name),
                     "last_hour": recent.to_json() if recent else None})
    mode = "embedded" if svc.settings.embedded else "celery"
    return page("console/engines.html", {"mode": mode, "engines": rows,
                                         "checks": {k: v for k, v in checks.items() if k in ("database", "broker")}})


def _admin_only() -> None:
    if not principal().allows("admin"):
        raise Forbidden("the keys page needs an admin key")


@bp.route("/keys", methods=["GET", "POST"])
def keys() -> Any:
    _admin_only()
    form = KeyForm()
    created, errors, status = None, {}, 200
    svc = services()
    if request.method == "POST":
        try:
            with svc.db.transaction() as session:
                created = {"name": form.name.data or "", "scope": form.scope.data,
                           "key": create_key(session, (form.name.data or "").strip(), form.scope.data or "")}
        except ValidationError as exc:
            errors, status = {exc.field: exc.message}, exc.status
    with svc.db.session() as session:
        items = [{"id": k.id, "name": k.name, "scope": k.scope, "prefix": k.prefix,
                  "created_at": k.created_at.isoformat(),
                  "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                  "you": k.id == g.console_key_id} for k in list_keys(session)]
    # the new key is shown once, in this response only (never stored in clear, never in the cookie)
    return page("console/keys.html", {"keys": items, "created": created, "errors": errors}, status,
                form=KeyForm(formdata=None) if created else form, revoke=RevokeForm())


@bp.post("/keys/revoke")
def revoke() -> Any:
    _admin_only()
    form = RevokeForm()
    try:
        key_id = int(form.key_id.data or "")
    except ValueError:
        raise ValidationError("key_id", "must be a key's id") from None
    svc = services()
    with svc.db.transaction() as session:
        row = revoke_key_id(session, key_id)
        name = row.name
    svc.keys.clear()  # this process's API refuses it at once too (others within their cache TTL)
    flash(f"Revoked the key {name!r}.")
    return redirect(url_for("console.keys"))
