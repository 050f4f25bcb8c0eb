"""The OpenAPI document matches the app's API routes, both ways (the web console's pages under
/console/ are HTML for people, not part of the API)."""

from __future__ import annotations

import re


def app_routes(app) -> set[tuple[str, str]]:  # type: ignore[no-untyped-def]
    routes = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static" or rule.endpoint.startswith("console."):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes |= {(m.lower(), path) for m in rule.methods - {"HEAD", "OPTIONS"}}
    return routes


def test_openapi_matches_routes(client, app) -> None:
    doc = client.get("/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == app_routes(app)
    for path, ops in doc["paths"].items():
        for op in ops.values():
            assert op["responses"] and op["summary"]
            for ref in re.findall(r'"\$ref": "#/components/schemas/(\w+)"', str(op).replace("'", '"')):
                assert ref in doc["components"]["schemas"], (path, ref)


def test_report_options_are_documented_with_types_ranges_and_defaults(client) -> None:
    doc = client.get("/openapi.json").get_json()
    params = {p["name"]: p for p in doc["paths"]["/v1/experiments/{key}/report"]["get"]["parameters"]}
    assert set(params) == {"key", "format", "alpha", "cap", "mde", "phase"}
    assert params["format"]["schema"] == {"type": "string", "enum": ["json", "html", "csv", "text"], "default": "json"}
    assert params["alpha"]["schema"]["default"] == 0.05 and params["alpha"]["schema"]["maximum"] == 0.5
    assert params["mde"]["schema"]["default"] == 0.05 and params["cap"]["schema"]["minimum"] == 0.5
    assert params["phase"]["schema"] == {"type": "integer", "minimum": 1}
    assert all(p["in"] == "query" and p["description"] for n, p in params.items() if n != "key")
