"""Engines whose tokenizers differ cannot be compared token by token: the scoring falls back to a
text similarity (the scorer's own greedy completion against the original) and says so."""

from __future__ import annotations

import difflib
import json
import shutil
from pathlib import Path

import pytest
from sqlalchemy import select

from abtest.app import create_app
from abtest.models import QualityScore
from abtest.services.keys import create_key
from tests.conftest import clear_tables, experiment_payload
from tests.serving.harness import infer_many

pytest.importorskip("torch")


@pytest.fixture(scope="module")
def other_tokenizer_registry(quality_specs, tmp_path_factory) -> str:  # type: ignore[no-untyped-def]
    """The tiny registry plus ``v1-other``: V1's checkpoint with one more (special) token in its
    tokenizer, so its vocabulary, and with it its fingerprint, differs."""
    from tokenizers import Tokenizer

    root = tmp_path_factory.mktemp("other-tokenizer")
    other = root / "v1-other"
    shutil.copytree(quality_specs["v1-fp32"].checkpoint, other)
    tok = Tokenizer.from_file(str(other / "tokenizer.json"))
    tok.add_special_tokens(["<|other|>"])
    tok.save(str(other / "tokenizer.json"))
    entries = [quality_specs[name].to_dict() for name in ("v1-fp32", "v2-int4", "v2-fp32")]
    entries.append({**quality_specs["v1-fp32"].to_dict(), "name": "v1-other", "checkpoint": str(other)})
    path = Path(root) / "registry.json"
    path.write_text(json.dumps({"engines": entries}))
    return str(path)


def test_another_tokenizer_is_scored_by_text_similarity(sqlite_url, other_tokenizer_registry) -> None:
    clear_tables(sqlite_url)
    app = create_app({"database_url": sqlite_url, "engine_registry": other_tokenizer_registry, "cache_ttl_s": 0.0,
                      "preload_engines": False, "infer_timeout_s": 60.0, "guardrail_interval_s": 0.0})
    services = app.extensions["abtest"]
    try:
        with services.db.transaction() as session:
            headers = {"Authorization": f"Bearer {create_key(session, 'quality', 'admin')}"}
        variants = [{"key": "control", "engine": "v1-fp32", "weight": 0.5, "control": True},
                    {"key": "treatment", "engine": "v2-int4", "weight": 0.5, "quality_reference": "v1-other"}]
        client = app.test_client()
        assert client.post("/v1/experiments", headers=headers, json=experiment_payload(
            "q", variants=variants, quality_sample=1.0)).status_code == 201
        assert client.post("/v1/experiments/q/start", headers=headers).status_code == 200
        calls = [{"experiment": "q", "unit_id": f"u{i}", "prompt": p, "max_new_tokens": 6}
                 for i, p in enumerate(["def fibonacci(n):", "import os\n", "class Queue:"] * 4)]
        replies = infer_many(app, headers, calls, concurrency=2)
        assert [s for s, _ in replies] == [200] * len(calls)
        assert services.quality.wait_idle(300)
        treated = [(c, b) for c, (_, b) in zip(calls, replies) if b["variant"] == "treatment"]
        assert treated
        quality = client.get("/v1/experiments/q/report", headers=headers).get_json()["quality"]
        [ref] = [r for r in quality["results"] if r["comparison"] == "reference"]
        assert (ref["generator"], ref["scorer"], ref["method"]) == ("v2-int4", "v1-other", "text")
        assert ref["kl"] is None and 0.0 <= ref["agreement"]["estimate"] <= 1.0
        assert ref["scored"] == len(treated)
        with services.db.session() as session:
            rows = session.scalars(select(QualityScore).where(QualityScore.comparison == "reference")).all()
        # each similarity is difflib's ratio of the original completion and v1-other's own greedy one
        served = {b["request_id"] for _, b in treated}
        assert {row.request_id for row in rows} == served
        for row in rows:
            assert row.method == "text" and row.tokens is None and 0.0 <= row.similarity <= 1.0
        direct = services.inference.dispatcher.submit(
            "v1-other", "check", {"prompt": treated[0][0]["prompt"], "max_new_tokens": 6, "temperature": 0.0,
                                  "top_p": 1.0, "seed": None, "stop": []}, 60).result(60)
        first = next(r for r in rows if r.request_id == treated[0][1]["request_id"])
        expected = difflib.SequenceMatcher(None, treated[0][1]["text"], direct["result"]["text"],
                                           autojunk=False).ratio()
        assert first.similarity == pytest.approx(expected)
    finally:
        services.close()
