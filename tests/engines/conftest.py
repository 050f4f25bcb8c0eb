import pytest

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def tiny_specs(tmp_path_factory):
    from engines.testing import build_tiny_checkpoints

    torch.set_num_threads(1)  # tiny models gain nothing from threads; avoids oversubscription
    return build_tiny_checkpoints(tmp_path_factory.mktemp("tiny-ckpts"))


@pytest.fixture(scope="session")
def tiny_engines(tiny_specs):
    from engines import load_engine

    engines = {name: load_engine(spec) for name, spec in tiny_specs.items()}
    yield engines
    for e in engines.values():
        e.close()


@pytest.fixture
def one_int4_kernel(tiny_engines):
    """The tiny V2 INT4 engine on one int4 kernel at every row count (AMX where the CPU has it):
    for tests that compare generations whose batches differ in size (static vs continuous, HF's
    one-row decode vs a batch). As served, decode steps of fewer than ``int4_amx_rows`` rows take
    the fp32-FMA kernel, whose rounding differs slightly, and this random tiny model turns such
    differences into other greedy tokens (see test_engines_int4_kernel)."""
    from engines.int4_layer import set_amx_rows

    eng = tiny_engines["v2-int4"]
    set_amx_rows(eng.loaded.model, 1)
    yield eng
    set_amx_rows(eng.loaded.model, eng.spec.int4_amx_rows)
