"""The OpenAPI 3 document of the v1 API. A test keeps it in sync with the app's routes."""

from __future__ import annotations

from typing import Any

__all__ = ["openapi_document", "OPERATIONS", "QUERY_PARAMETERS"]

_ERROR = {"$ref": "#/components/schemas/Error"}
_STR, _NUM, _BOOL, _INT = {"type": "string"}, {"type": "number"}, {"type": "boolean"}, {"type": "integer"}
_OBJ = {"type": "object"}
_TIME = {"type": "string", "format": "date-time"}


def _obj(required: list[str], **props: Any) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": props, "additionalProperties": False}


_VARIANT = _obj(["key", "engine", "weight"], key=_STR, engine=_STR, weight=_NUM, control=_BOOL, shadow=_BOOL)
_METRIC = _obj(["name"], name=_STR, event=_STR, kind={"enum": ["binary", "count", "sum"]},
               role={"enum": ["primary", "secondary", "guardrail"]},
               direction={"enum": ["increase", "decrease"]}, attribution_window_hours=_NUM, margin=_NUM)
_RULE = _obj(["attribute", "op", "value"], attribute=_STR, op=_STR, value={})
_EXPERIMENT_FIELDS = dict(
    name=_STR, hypothesis=_STR, owner=_STR, coverage=_NUM,
    variants={"type": "array", "items": _VARIANT, "minItems": 2},
    targeting={"type": "array", "items": _RULE}, forced=_OBJ,
    metrics={"type": "array", "items": _METRIC}, sticky=_BOOL,
    ramp={"type": "array", "maxItems": 50, "description": "coverage ramp steps in time order, applied by the "
          "monitor while the experiment runs",
          "items": _obj(["at", "coverage"], at=_TIME, coverage={"type": "number", "minimum": 0, "maximum": 1})},
    start_at={**_TIME, "nullable": True, "description": "the monitor starts the draft at this time"},
    stop_at={**_TIME, "nullable": True, "description": "the monitor stops the experiment at this time "
             "(after start_at)"},
)
SCHEMAS: dict[str, Any] = {
    "Error": _obj(["error"], error=_obj(["code", "message"], code=_STR, message=_STR, details={}),
                  request_id=_STR),
    "ExperimentCreate": _obj(["key", "variants"], key=_STR, layer=_STR, layer_share=_NUM, **_EXPERIMENT_FIELDS),
    "ExperimentPatch": _obj([], treatment_paused=_BOOL, **_EXPERIMENT_FIELDS),
    "Experiment": {"type": "object"},
    "AssignRequest": _obj(["experiment", "unit_id"], experiment=_STR, unit_id=_STR, attributes=_OBJ),
    "AssignResponse": _obj(["experiment", "variant", "engine", "in_experiment"], experiment=_STR,
                           variant=_STR, engine=_STR, in_experiment=_BOOL, reason=_STR),
    "Event": _obj(["event_id", "unit_id", "name"], event_id={"type": "string", "maxLength": 64},
                  unit_id={"type": "string", "maxLength": 200}, name={"type": "string", "maxLength": 100},
                  value={"type": "number", "default": 1}, timestamp={"type": "string", "format": "date-time"},
                  request_id={"type": "string", "maxLength": 36}, experiment={"type": "string", "maxLength": 100}),
    "InferRequest": _obj(["experiment", "unit_id", "prompt"], experiment=_STR, unit_id=_STR, attributes=_OBJ,
                         prompt={"type": "string", "maxLength": 32768},
                         max_new_tokens={"type": "integer", "minimum": 1, "maximum": 1024},
                         temperature={"type": "number", "minimum": 0, "maximum": 2},
                         top_p={"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                         seed=_INT, stop={"type": "array", "items": _STR, "maxItems": 4}),
    "InferResponse": _obj(["request_id", "experiment", "variant", "engine", "text"], request_id=_STR,
                          experiment=_STR, variant=_STR, engine=_STR, text=_STR, prompt_tokens=_INT,
                          completion_tokens=_INT, latency_ms=_NUM, ttft_ms=_NUM, queue_ms=_NUM, batch_size=_INT),
    "PrometheusText": {"type": "string"},
    "EventBatch": _obj(["events"], events={"type": "array", "maxItems": 1000,
                                           "items": {"$ref": "#/components/schemas/Event"}}),
    "EventBatchResult": _obj(["accepted", "duplicates", "rejected"], accepted=_INT, duplicates=_INT,
                             rejected={"type": "array", "items": _obj(["index", "error"], index=_INT, error=_STR)}),
    "Report": {"type": "object", "description": "JSON report, keys in a documented order: recommendation, "
               "headline, experiment, generated_at, options, srm, variants, metrics, recommendations, "
               "timeseries, latency_histogram, shadow, quality; ?format=html|csv|text returns text"},
    "CsvText": {"type": "string"},
    "PlanRequest": _obj(
        [], kind={"enum": ["binary", "mean"]}, baseline=_NUM, sd=_NUM, variance=_NUM, experiment=_STR,
        metric=_STR, mde={"type": "number", "exclusiveMinimum": True, "minimum": 0},
        margin={"type": "number", "exclusiveMinimum": True, "minimum": 0}, relative={"type": "boolean", "default": True},
        direction={"enum": ["increase", "decrease"]},
        alpha={"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 0.5, "default": 0.05},
        power={"type": "number", "exclusiveMinimum": True, "minimum": 0.5, "exclusiveMaximum": True,
               "maximum": 1, "default": 0.8},
        variants={"type": "integer", "minimum": 2, "maximum": 20, "default": 2},
        daily_units={"type": "number", "exclusiveMinimum": True, "minimum": 0},
        coverage={"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 1},
        traffic_days={"type": "integer", "minimum": 1, "maximum": 90, "default": 7}),
    "Plan": {"type": "object", "required": ["units_per_variant", "total_units", "days"], "description":
             "units_per_variant, total_units, days (null without traffic), then the test, the baseline and "
             "variance it was sized on, the per-comparison alpha (Bonferroni over the treatments), the "
             "traffic, the source (given or the experiment's history) and the inputs echoed"},
    "ChatCompletionRequest": {"type": "object", "required": ["model", "messages"], "description":
                              "OpenAI's chat completion request (docs/openai.md): model is an experiment key or, "
                              "for an admin key, an engine; user or X-Abtest-Unit is the unit; stream: true "
                              "answers text/event-stream"},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                          "description": "OpenAI's completion request (docs/openai.md)"},
    "OpenAICompletion": {"type": "object", "description": "chat.completion / text_completion, or SSE chunks "
                         "ending with data: [DONE]; errors in OpenAI's shape {error: {message, type, param, code}}"},
    "ModelList": {"type": "object", "description": "running experiments (and engines for an admin key)"},
    "Definitions": _obj(["version", "experiments"], version=_STR, experiments={"type": "array", "items": _OBJ},
                        layers={"type": "object", "description": "layer name -> {\"holdout\": share}, for "
                                "layers whose holdout share is above 0"}),
    "EventStream": {"type": "string", "description": "text/event-stream: `event: definitions` frames with "
                    "{\"version\"}, `: keep-alive` comments; ends after ?max_s seconds"},
    "Exposure": _obj(["exposure_id", "experiment", "phase", "unit_id", "variant", "first_seen", "last_seen"],
                     exposure_id={"type": "string", "maxLength": 64}, experiment=_STR, phase=_INT, unit_id=_STR,
                     variant=_STR, first_seen={}, last_seen={}, count={"type": "integer", "minimum": 1},
                     sticky=_BOOL, holdout=_BOOL,
                     segments={"type": "object", "additionalProperties": _STR,
                               "description": "the unit's level per declared dimension "
                                              "(a declared level or \"other\")"}),
    "ExposureBatch": _obj(["exposures"], exposures={"type": "array", "maxItems": 1000,
                                                    "items": {"$ref": "#/components/schemas/Exposure"}}),
    "LayerSettings": _obj(["holdout"], holdout={"type": "number", "minimum": 0, "maximum": 0.5}),
    "Layer": _obj(["name", "holdout", "experiments"], name=_STR, holdout=_NUM,
                  experiments={"type": "array", "items": _OBJ}, created_at={}, updated_at={}),
    "LayerList": _obj(["layers"], layers={"type": "array", "items": {"$ref": "#/components/schemas/Layer"}}),
    "LayerReport": {"type": "object", "description": "cumulative impact: layer, holdout, alpha, experiments, "
                    "units {holdout, exposed, both}, holdout_split, metrics (exposed vs holdout: difference, "
                    "relative_lift, each with ci_lower, ci_upper, p_value), method; ?format=html returns a page"},
}

def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


# Query parameters per operation (the report's options: ?alpha=0.1&phase=1&format=csv ...).
QUERY_PARAMETERS: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("get", "/v1/experiments/{key}/report"): [
        _query("format", {"type": "string", "enum": ["json", "html", "csv", "text"], "default": "json"},
               "json: the report (recommendation and headline first); html: a self-contained page; "
               "csv: the results table, one row per metric and treatment; text: the console summary"),
        _query("alpha", {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                         "maximum": 0.5, "default": 0.05},
               "significance level of every CI and test (95% CIs at the default)"),
        _query("cap", {"type": "number", "exclusiveMinimum": True, "minimum": 0.5, "exclusiveMaximum": True,
                       "maximum": 1},
               "winsorize request latency at this pooled quantile level (e.g. 0.99) before latency_ms is "
               "computed; default: no capping"),
        _query("mde", {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                       "maximum": 10, "default": 0.05},
               "relative minimum detectable effect of the primary metric's power plan (0.05 = 5 %)"),
        _query("phase", {"type": "integer", "minimum": 1},
               "read this phase's results (1 = the first); default: the current phase; a phase the "
               "experiment never had is a 404"),
    ],
    ("get", "/v1/layers/{name}/report"): [
        _query("format", {"type": "string", "enum": ["json", "html"], "default": "json"},
               "json: the cumulative impact report; html: a self-contained page"),
        _query("alpha", {"type": "number", "exclusiveMinimum": True, "minimum": 0, "exclusiveMaximum": True,
                         "maximum": 0.5, "default": 0.05},
               "significance level of every CI and test (95% CIs at the default)"),
    ],
    ("get", "/v1/sdk/definitions/stream"): [
        _query("max_s", {"type": "number", "exclusiveMinimum": True, "minimum": 0, "maximum": 3600, "default": 300},
               "end the stream after this many seconds (clients reconnect)"),
    ],
    ("get", "/v1/experiments/{key}/export"): [
        {**_query("table", {"type": "string", "enum": ["exposures", "requests", "events"]},
                  "which raw table to stream as CSV"), "required": True},
    ],
}

# (method, path, summary, scope or None, request schema or None, success status, response schema)
OPERATIONS: list[tuple[str, str, str, str | None, str | None, int, str]] = [
    ("get", "/healthz", "Liveness and dependency reachability", None, None, 200, "Experiment"),
    ("get", "/openapi.json", "This document", None, None, 200, "Experiment"),
    ("post", "/v1/experiments", "Create an experiment (draft)", "admin", "ExperimentCreate", 201, "Experiment"),
    ("get", "/v1/experiments", "List experiments", "viewer", None, 200, "Experiment"),
    ("get", "/v1/experiments/{key}", "Show an experiment", "viewer", None, 200, "Experiment"),
    ("patch", "/v1/experiments/{key}", "Change an experiment", "admin", "ExperimentPatch", 200, "Experiment"),
    ("post", "/v1/experiments/{key}/start", "Start or resume", "admin", None, 200, "Experiment"),
    ("post", "/v1/experiments/{key}/pause", "Pause", "admin", None, 200, "Experiment"),
    ("post", "/v1/experiments/{key}/stop", "Stop for good", "admin", None, 200, "Experiment"),
    ("get", "/v1/experiments/{key}/audit", "Audit log", "viewer", None, 200, "Experiment"),
    ("get", "/v1/layers", "List layers and their holdout shares", "admin", None, 200, "LayerList"),
    ("get", "/v1/layers/{name}", "Show a layer", "admin", None, 200, "Layer"),
    ("put", "/v1/layers/{name}", "Set a layer's holdout share (409 while one of its experiments runs)", "admin",
     "LayerSettings", 200, "Layer"),
    ("get", "/v1/layers/{name}/report", "Cumulative impact: the layer's holdout vs its exposed units", "admin",
     None, 200, "LayerReport"),
    ("post", "/v1/assign", "Assign a unit to a variant", "sdk", "AssignRequest", 200, "AssignResponse"),
    ("post", "/v1/infer", "Assign the unit and run its variant's engine", "sdk", "InferRequest", 200,
     "InferResponse"),
    ("get", "/metrics", "Prometheus metrics of this process", None, None, 200, "PrometheusText"),
    ("post", "/v1/events", "Ingest a batch of events (idempotent by event_id)", "sdk", "EventBatch", 202,
     "EventBatchResult"),
    ("get", "/v1/experiments/{key}/report", "Results: JSON, or ?format=html|csv|text", "viewer", None, 200, "Report"),
    ("get", "/v1/experiments/{key}/export", "Raw CSV of ?table=exposures|requests|events", "admin", None, 200,
     "CsvText"),
    ("post", "/v1/plan", "Power planner: units and days for a metric (given, or from an experiment's history)",
     "viewer", "PlanRequest", 200, "Plan"),
    ("post", "/v1/chat/completions", "OpenAI-compatible chat completion (streamed with stream: true)", "sdk",
     "ChatCompletionRequest", 200, "OpenAICompletion"),
    ("post", "/v1/completions", "OpenAI-compatible text completion", "sdk", "CompletionRequest", 200,
     "OpenAICompletion"),
    ("get", "/v1/models", "OpenAI-compatible model list", "sdk", None, 200, "ModelList"),
    ("get", "/v1/sdk/definitions", "Every experiment's assignment config, for local evaluation (ETag, 304)",
     "sdk", None, 200, "Definitions"),
    ("get", "/v1/sdk/definitions/stream", "Server-sent events announcing new definitions versions", "sdk",
     None, 200, "EventStream"),
    ("post", "/v1/exposures", "Exposures of local assignments (idempotent by exposure_id)", "sdk",
     "ExposureBatch", 202, "EventBatchResult"),
]


def _operation(method: str, path: str, summary: str, scope: str | None, body: str | None,
               status: int, schema: str) -> dict[str, Any]:
    op: dict[str, Any] = {
        "summary": summary,
        "operationId": f"{method}_{path.strip('/').replace('/', '_').replace('{', '').replace('}', '')}",
        "responses": {
            str(status): {"description": "success",
                          "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}},
            "default": {"description": "error", "content": {"application/json": {"schema": _ERROR}}},
        },
    }
    for name in ("key", "name"):
        if f"{{{name}}}" in path:
            op["parameters"] = [{"name": name, "in": "path", "required": True, "schema": _STR}]
    if (method, path) in QUERY_PARAMETERS:
        op["parameters"] = op.get("parameters", []) + QUERY_PARAMETERS[(method, path)]
    if body is not None:
        op["requestBody"] = {"required": True, "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{body}"}}}}
    op["security"] = [{"bearer": [scope]}] if scope else []
    return op


def openapi_document() -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for method, path, *rest in OPERATIONS:
        paths.setdefault(path, {})[method] = _operation(method, path, *rest)
    return {
        "openapi": "3.0.3",
        "info": {"title": "abtest", "version": "1", "description": "A/B testing for LLM inference engines"},
        "paths": paths,
        "components": {"schemas": SCHEMAS,
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
