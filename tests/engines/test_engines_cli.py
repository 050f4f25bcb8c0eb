import json
import shutil

from click.testing import CliRunner

from engines.cli import engines


def test_list_builtins(tmp_path):
    r = CliRunner().invoke(engines, ["list", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.output.strip().splitlines()]
    assert {x["name"] for x in rows} == {"v1-fp32", "v2-int4", "v2-fp32"}
    assert all(x["checkpoint_present"] is False for x in rows)


def test_list_bad_registry(tmp_path):
    f = tmp_path / "reg.json"
    f.write_text(json.dumps({"engines": [{"name": "x", "checkpoint": "c", "precision": "int3"}]}))
    r = CliRunner().invoke(engines, ["list", "--registry", str(f)])
    assert r.exit_code != 0 and "precision" in r.output


def test_quantize_command_and_load(tiny_specs, tmp_path):
    from engines import GenerationRequest, load_engine
    from engines.quant import read_int4_config
    from engines.spec import EngineSpec

    dst = tmp_path / "q128"
    r = CliRunner().invoke(engines, ["quantize", tiny_specs["v2-fp32"].checkpoint, str(dst), "--group-size", "128",
                                     "--lm-head-group-size", "none", "--calibration", "none"])
    assert r.exit_code == 0, r.output
    meta = read_int4_config(dst)
    assert meta["group_size"] == 128 and meta["lm_head_group_size"] is None
    assert not any(n.endswith("lm_head") for n in meta["quantized"])
    spec = EngineSpec(name="q128", checkpoint=str(dst), precision="int4", group_size=128, attention="hybrid",
                      context_window=512, sliding_window=16)
    eng = load_engine(spec)
    res = eng.generate([GenerationRequest("import os", max_new_tokens=4)])[0]
    assert res.completion_tokens >= 1


def test_build_demo_small(tiny_specs, tmp_path, monkeypatch):
    """The demo builder end to end at toy size: trains (2 steps), saves, quantizes, caches."""
    from pathlib import Path

    from engines import demo

    root = tmp_path / "demo"
    shutil.copytree(Path(tiny_specs["v1-fp32"].checkpoint).parent / "tokenizer", root / "tokenizer")
    texts = demo.stdlib_texts(max_chars=60_000, per_file=5_000)
    monkeypatch.setattr(demo, "stdlib_texts", lambda *a, **k: texts)
    size = demo.DemoSize(vocab=512, hidden=128, intermediate=256, layers=2, heads=4, kv_heads=2, train_steps=2,
                         batch=2, seq=32)
    s = demo.build_demo(root, progress=False, size=size)
    assert s["v1-fp32"]["steps"] == 2 and s["v2-int4"]["group_size"] == 64
    for d in ("v1-fp32", "v2-fp32", "v2-int4"):
        assert (root / d / "config.json").is_file()
    v2 = json.loads((root / "v2-fp32" / "config.json").read_text())
    assert v2["use_sliding_window"] is True and v2["layer_types"] == ["sliding_attention", "full_attention"]
    again = demo.build_demo(root, progress=False, size=size)
    assert again["v1-fp32"] == "cached" and again["v2-int4"] == "cached"
