"""engines.compute: the thread an engine's torch work runs on."""

import threading

import pytest

from engines import compute


def test_run_returns_results_and_raises_errors_on_one_thread():
    ct = compute.ComputeThread("test-compute")
    names = set()

    def work(x, *, y):
        names.add(threading.current_thread().name)
        return x + y

    callers = [threading.Thread(target=lambda i=i: ct.run(work, i, y=1)) for i in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert ct.run(work, 2, y=3) == 5
    assert names == {"test-compute"}

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        ct.run(boom)
    assert ct.run(work, 1, y=1) == 2  # the thread survives a failed call
    assert compute.run(threading.current_thread).name == "engines-compute"  # the process default


def test_a_call_from_the_compute_thread_runs_inline():
    ct = compute.ComputeThread("test-inline")

    def outer():
        assert ct.on_thread()
        return ct.run(threading.current_thread)  # would deadlock if queued behind itself

    assert ct.run(outer).name == "test-inline"
    assert not ct.on_thread()


def test_a_forked_child_starts_its_own_thread(monkeypatch):
    ct = compute.ComputeThread("test-fork")
    ct.run(lambda: None)
    first = ct._thread
    monkeypatch.setattr(ct, "_pid", -1)  # as a child after fork sees it: another process's
    assert ct.run(threading.current_thread) is not first
    assert ct._thread is not first and ct._thread.is_alive()


def test_the_callers_torch_thread_count_goes_with_the_call():
    torch = pytest.importorskip("torch")
    ct = compute.ComputeThread("test-threads")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert ct.run(torch.get_num_threads) == 1
        torch.set_num_threads(2)
        assert ct.run(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_an_engine_runs_on_its_own_thread_unless_given_one(tiny_specs, tiny_engines, monkeypatch):
    from engines import BatchingScheduler, GenerationRequest, load_engine

    eng = tiny_engines["v1-fp32"]
    assert eng.compute_thread.name == "engine-v1-fp32"
    assert tiny_engines["v2-int4"].compute_thread is not eng.compute_thread  # engines compute side by side
    seen = []
    orig = eng.runner.forward

    def forward(*a, **k):
        seen.append(threading.current_thread().name)
        return orig(*a, **k)

    monkeypatch.setattr(eng.runner, "forward", forward)
    eng.generate([GenerationRequest("def f():", max_new_tokens=2)])
    eng.teacher_forced_logits([0, 5, 6])
    eng.score("def f():", " return 1")
    with BatchingScheduler(eng, max_batch_size=2, max_wait_ms=1) as s:
        s.submit(GenerationRequest("x = 1", max_new_tokens=2)).result(60)
    assert len(seen) >= 5 and set(seen) == {"engine-v1-fp32"}

    shared = compute.ComputeThread("test-shared")
    a = load_engine(tiny_specs["v1-fp32"], shared)
    b = load_engine(tiny_specs["v2-int4"], shared)
    try:
        assert a.compute_thread is b.compute_thread is shared
    finally:
        a.close()
        b.close()
