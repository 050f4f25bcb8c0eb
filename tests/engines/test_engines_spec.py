import json
import subprocess
import sys

import pytest

from engines.spec import EngineSpec, builtin_specs, load_registry


def test_builtins(tmp_path):
    specs = builtin_specs(tmp_path)
    assert set(specs) == {"v1-fp32", "v2-int4", "v2-fp32"}
    v1, v2, ref = specs["v1-fp32"], specs["v2-int4"], specs["v2-fp32"]
    assert (v1.precision, v1.attention, v1.context_window) == ("fp32", "dense", 2048)
    assert (v2.precision, v2.attention, v2.context_window, v2.sliding_window, v2.group_size) == (
        "int4", "hybrid", 8192, 1024, 64)
    assert (ref.precision, ref.attention, ref.context_window, ref.sliding_window, ref.group_size) == (
        "fp32", "hybrid", 8192, 1024, None)
    assert ref.checkpoint == str(tmp_path / "v2-fp32") and ref.cost_per_hour == v2.cost_per_hour
    assert v1.checkpoint == str(tmp_path / "v1-fp32")
    assert (v1.max_batch_size, v1.max_wait_ms, v1.max_queue) == (256, 50.0, 1024)


def test_the_engines_read_no_environment_and_their_commands_pass_it_in(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from engines.cli import engines as engines_cli

    monkeypatch.setenv("ABTEST_CHECKPOINT_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert builtin_specs()["v2-int4"].checkpoint == str(tmp_path / "var" / "checkpoints" / "v2-int4")
    out = CliRunner().invoke(engines_cli, ["list"])
    assert out.exit_code == 0, out.output
    listed = {json.loads(line)["name"]: json.loads(line)["checkpoint"] for line in out.output.splitlines()}
    assert listed["v2-int4"] == str(tmp_path / "v2-int4")  # the command took $ABTEST_CHECKPOINT_DIR


def test_registry_override_and_extend(tmp_path):
    f = tmp_path / "engines.json"
    f.write_text(json.dumps({"engines": [
        {"name": "v1-fp32", "max_wait_ms": 5},
        {"name": "my-int4", "checkpoint": "ck/int4", "precision": "int4", "group_size": 128,
         "attention": "hybrid", "context_window": 4096},
    ]}))
    specs = load_registry(f, checkpoint_root=tmp_path)
    assert specs["v1-fp32"].max_wait_ms == 5
    assert specs["v1-fp32"].checkpoint == str(tmp_path / "v1-fp32")
    assert specs["my-int4"].checkpoint == str(tmp_path / "ck/int4")
    assert specs["my-int4"].group_size == 128
    assert "v2-int4" in specs


@pytest.mark.parametrize("entry,field", [
    ({"name": "x", "checkpoint": "c", "precision": "int8"}, "precision"),
    ({"name": "x", "checkpoint": "c", "precision": "int4", "group_size": 48}, "group_size"),
    ({"name": "x", "checkpoint": "c", "context_window": 0}, "context_window"),
    ({"name": "x", "checkpoint": "c", "attention": "sparse"}, "attention"),
    ({"name": "x", "checkpoint": "c", "bogus": 1}, "bogus"),
    ({"name": "x"}, "checkpoint"),
])
def test_registry_bad_field(tmp_path, entry, field):
    f = tmp_path / "engines.json"
    f.write_text(json.dumps({"engines": [entry]}))
    with pytest.raises(ValueError, match=field):
        load_registry(f, checkpoint_root=tmp_path)


def test_registry_bad_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_registry(tmp_path / "nope.json")
    f = tmp_path / "bad.json"
    f.write_text("{")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_registry(f)
    f.write_text("[]")
    with pytest.raises(ValueError, match="engines"):
        load_registry(f)


def test_spec_validates_directly():
    with pytest.raises(ValueError, match="group_size"):
        EngineSpec(name="x", checkpoint="c", precision="fp32", group_size=64)


def test_spec_and_types_do_not_import_torch():
    code = ("import sys, engines, engines.spec, engines.types; "
            "engines.builtin_specs(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_errors_have_codes():
    from engines.types import EngineClosed, EngineError, InvalidRequest, Overloaded, PromptTooLong
    import pickle

    assert PromptTooLong("x").code == "prompt_too_long"
    assert issubclass(PromptTooLong, InvalidRequest) and issubclass(InvalidRequest, EngineError)
    assert Overloaded("x").code == "overloaded" and EngineClosed("x").code == "engine_closed"
    e = pickle.loads(pickle.dumps(PromptTooLong("too long")))
    assert isinstance(e, PromptTooLong) and str(e) == "too long"
