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
