"""engines.compute: one thread per process runs the engines' torch work."""

import threading

import pytest

from engines import compute


def test_run_returns_results_and_raises_errors_on_one_thread():
    names = set()

    def work(x, *, y):
        names.add(threading.current_thread().name)
        return x + y

    callers = [threading.Thread(target=lambda i=i: compute.run(work, i, y=1)) for i in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert compute.run(work, 2, y=3) == 5
    assert names == {"engines-compute"}

    def boom():
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        compute.run(boom)
    assert compute.run(work, 1, y=1) == 2  # the thread survives a failed call


def test_a_call_from_the_compute_thread_runs_inline():
    def outer():
        assert compute.on_compute_thread()
        return compute.run(threading.current_thread)  # would deadlock if queued behind itself

    assert compute.run(outer).name == "engines-compute"
    assert not compute.on_compute_thread()


def test_a_forked_child_starts_its_own_thread(monkeypatch):
    compute.run(lambda: None)
    first = compute._thread
    monkeypatch.setattr(compute, "_pid", -1)  # as a child after fork sees it: another process's
    assert compute.run(lambda: threading.current_thread()) is not first
    assert compute._thread is not first and compute._thread.is_alive()


def test_the_callers_torch_thread_count_goes_with_the_call():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert compute.run(torch.get_num_threads) == 1
        torch.set_num_threads(2)
        assert compute.run(torch.get_num_threads) == 2
    finally:
        torch.set_num_threads(before)


def test_generation_and_scoring_run_on_the_compute_thread(tiny_engines, monkeypatch):
    from engines import BatchingScheduler, GenerationRequest

    eng = tiny_engines["v1-fp32"]
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
    assert len(seen) >= 5 and set(seen) == {"engines-compute"}
