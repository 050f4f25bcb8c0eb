import resource
import threading
import time

import pytest

from engines import BatchingScheduler, GenerationRequest, GenerationResult
from engines.types import EngineClosed, InvalidRequest, Overloaded


class FakeEngine:
    """Echoes prompts; records the batches it saw; can block or fail on demand."""

    def __init__(self, spec=None):
        self.spec = spec
        self.batches = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_all = None

    def generate(self, requests, *, queue_ms=None, alive=None):
        self.gate.wait(10)
        self.batches.append([r.prompt for r in requests])
        if self.fail_all is not None:
            raise self.fail_all
        out = []
        for r, q in zip(requests, queue_ms or [0.0] * len(requests)):
            if r.prompt.startswith("bad"):
                out.append(InvalidRequest(f"bad prompt {r.prompt}"))
            else:
                out.append(GenerationResult(text=r.prompt.upper(), prompt_tokens=1, completion_tokens=1,
                                            queue_ms=q, ttft_ms=0.1, decode_ms=0.1, total_ms=q + 0.2,
                                            batch_size=len(requests), finish_reason="length"))
        return out


def test_flush_on_size():
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=4, max_wait_ms=10_000, idle_gap_ms=10_000, max_queue=100) as s:
        t0 = time.monotonic()
        futs = [s.submit(GenerationRequest(f"p{i}")) for i in range(4)]
        res = [f.result(timeout=5) for f in futs]
        assert time.monotonic() - t0 < 2.0  # did not wait for the 10 s deadline
        assert eng.batches == [["p0", "p1", "p2", "p3"]]
        assert all(r.batch_size == 4 for r in res)


def test_flush_on_deadline():
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=100, max_wait_ms=60, idle_gap_ms=10_000, max_queue=100) as s:
        t0 = time.monotonic()
        f1 = s.submit(GenerationRequest("a"))
        time.sleep(0.02)
        f2 = s.submit(GenerationRequest("b"))
        r1, r2 = f1.result(timeout=5), f2.result(timeout=5)
        waited = time.monotonic() - t0
        assert 0.05 <= waited < 1.0
        assert eng.batches == [["a", "b"]]
        assert r1.queue_ms >= 50 and r2.queue_ms < r1.queue_ms


def test_results_map_to_callers_and_errors_propagate():
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=8, max_wait_ms=20, idle_gap_ms=20) as s:
        futs = {p: s.submit(GenerationRequest(p)) for p in ["x1", "bad2", "x3", "x4"]}
        assert futs["x1"].result(5).text == "X1" and futs["x4"].result(5).text == "X4"
        with pytest.raises(InvalidRequest, match="bad2"):
            futs["bad2"].result(5)
        # a failure of the whole batch reaches every caller
        eng.fail_all = RuntimeError("engine exploded")
        f = [s.submit(GenerationRequest(f"y{i}")) for i in range(3)]
        for x in f:
            with pytest.raises(RuntimeError, match="exploded"):
                x.result(5)
        eng.fail_all = None
        assert s.submit(GenerationRequest("z")).result(5).text == "Z"  # worker survived


def test_overloaded_when_full():
    eng = FakeEngine()
    eng.gate.clear()  # the engine blocks: the first batch is stuck running
    s = BatchingScheduler(eng, max_batch_size=1, max_wait_ms=0, max_queue=2)
    try:
        first = s.submit(GenerationRequest("run"))
        deadline = time.monotonic() + 5
        while s.queue_depth() and time.monotonic() < deadline:
            time.sleep(0.005)
        q1 = s.submit(GenerationRequest("q1"))
        q2 = s.submit(GenerationRequest("q2"))
        assert s.queue_depth() == 2
        with pytest.raises(Overloaded) as ei:
            s.submit(GenerationRequest("q3"))
        assert ei.value.code == "overloaded"
        eng.gate.set()
        assert [f.result(5).text for f in (first, q1, q2)] == ["RUN", "Q1", "Q2"]
    finally:
        eng.gate.set()
        s.close()


def test_close_drains_then_refuses():
    eng = FakeEngine()
    eng.gate.clear()
    s = BatchingScheduler(eng, max_batch_size=2, max_wait_ms=10_000, idle_gap_ms=10_000, max_queue=100)
    futs = [s.submit(GenerationRequest(f"d{i}")) for i in range(5)]
    threading.Timer(0.1, eng.gate.set).start()
    s.close(drain=True, timeout=10)
    assert [f.result(0).text for f in futs] == [f"D{i}" for i in range(5)]
    with pytest.raises(EngineClosed):
        s.submit(GenerationRequest("late"))


def test_close_without_drain_fails_queued():
    eng = FakeEngine()
    eng.gate.clear()
    s = BatchingScheduler(eng, max_batch_size=1, max_wait_ms=0, max_queue=100)
    running = s.submit(GenerationRequest("r"))
    deadline = time.monotonic() + 5
    while s.queue_depth() and time.monotonic() < deadline:
        time.sleep(0.005)
    queued = [s.submit(GenerationRequest(f"q{i}")) for i in range(3)]
    threading.Timer(0.1, eng.gate.set).start()
    s.close(drain=False, timeout=10)
    assert running.result(5).text == "R"
    for f in queued:
        with pytest.raises(EngineClosed):
            f.result(0)


def test_defaults_from_spec():
    from engines.spec import EngineSpec

    spec = EngineSpec(name="e", checkpoint="c", max_batch_size=7, max_wait_ms=3.5, max_queue=9)
    with BatchingScheduler(FakeEngine(spec)) as s:
        assert (s.max_batch_size, s.max_wait_ms, s.max_queue) == (7, 3.5, 9)


def test_idle_scheduler_does_not_poll():
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=4, max_wait_ms=1):
        before = resource.getrusage(resource.RUSAGE_SELF)
        time.sleep(0.5)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.05, cpu


def test_many_threads_real_engine(tiny_engines):
    eng = tiny_engines["v2-int4"]
    prompts = [f"def f{i}(x):\n    return x + {i}" for i in range(12)]
    expected = {p: r.text for p, r in zip(prompts, eng.generate([GenerationRequest(p, max_new_tokens=8) for p in prompts]))}
    results: dict = {}
    errors = []
    with BatchingScheduler(eng, max_batch_size=16, max_wait_ms=30, idle_gap_ms=30, max_queue=256) as s:
        def worker(k):
            try:
                for j in range(3):
                    p = prompts[(k + j) % len(prompts)]
                    r = s.submit(GenerationRequest(p, max_new_tokens=8, request_id=f"{k}-{j}")).result(60)
                    results[(k, j)] = (p, r)
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert not errors
    assert len(results) == 36
    for (k, j), (p, r) in results.items():
        assert r.text == expected[p] and r.request_id == f"{k}-{j}"
    assert max(r.batch_size for _, r in results.values()) > 1


class HonouringEngine(FakeEngine):
    """A FakeEngine that, like the real one, finishes a row "expired" when nobody waits for it."""

    def generate(self, requests, *, queue_ms=None, alive=None):
        results = super().generate(requests, queue_ms=queue_ms)
        for i, r in enumerate(results):
            if alive is not None and not alive[i]():
                results[i] = GenerationResult(text="", prompt_tokens=1, completion_tokens=0, queue_ms=0.0,
                                              ttft_ms=0.0, decode_ms=0.0, total_ms=0.0, batch_size=len(requests),
                                              finish_reason="expired")
        return results


def test_a_request_past_its_deadline_is_dropped_before_it_runs():
    from engines.scheduler import Expired

    eng = FakeEngine()
    eng.gate.clear()
    with BatchingScheduler(eng, max_batch_size=1, max_wait_ms=0, max_queue=10) as s:
        blocker = s.submit(GenerationRequest("first"))
        late = s.submit(GenerationRequest("late"), deadline=time.time() - 1)
        eng.gate.set()
        assert blocker.result(5).text == "FIRST"
        with pytest.raises(Expired) as ei:
            late.result(5)
        assert ei.value.code == "expired"
    assert ["late"] not in eng.batches  # the engine never saw it


def test_an_abandoned_running_request_ends_expired_and_the_rest_are_served():
    from engines.scheduler import Expired

    eng = HonouringEngine()
    eng.gate.clear()
    with BatchingScheduler(eng, max_batch_size=2, max_wait_ms=10_000, idle_gap_ms=10_000, max_queue=10) as s:
        gone, kept = s.submit(GenerationRequest("gone")), s.submit(GenerationRequest("kept"))
        deadline = time.monotonic() + 5
        while not gone.running() and time.monotonic() < deadline:
            time.sleep(0.005)
        assert gone.running()
        gone.abandon()  # a running future cannot be cancelled: it is dropped by the engine instead
        eng.gate.set()
        with pytest.raises(Expired):
            gone.result(5)
        assert kept.result(5).text == "KEPT"


def test_an_idle_engine_starts_a_lone_request_at_once():
    """max_wait_ms bounds how long a request waits for company; with no other request arriving
    within idle_gap_ms there is none to wait for, so it runs at once."""
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=100, max_wait_ms=30_000, idle_gap_ms=1, max_queue=100) as s:
        result = s.submit(GenerationRequest("alone")).result(timeout=20)  # far short of 30 s
        assert eng.batches == [["alone"]]
        assert result.queue_ms < 15_000


def test_a_burst_inside_the_idle_gap_runs_as_one_batch():
    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=100, max_wait_ms=30_000, idle_gap_ms=2_000, max_queue=100) as s:
        futures = [s.submit(GenerationRequest(f"p{i}")) for i in range(6)]
        assert [f.result(timeout=20).batch_size for f in futures] == [6] * 6
        assert eng.batches == [[f"p{i}" for i in range(6)]]


def test_the_idle_gap_is_a_spec_field_and_validated():
    from engines import EngineSpec

    spec = EngineSpec(name="e", checkpoint="c", idle_gap_ms=0.5)
    with BatchingScheduler(FakeEngine(spec)) as s:
        assert s.idle_gap_ms == 0.5
    assert EngineSpec(name="e", checkpoint="c").idle_gap_ms == 2.0
    with pytest.raises(ValueError, match="idle_gap_ms"):
        EngineSpec(name="e", checkpoint="c", idle_gap_ms=-1)
    with pytest.raises(ValueError, match="idle_gap_ms"):
        BatchingScheduler(FakeEngine(), idle_gap_ms=-1)


def test_batch_statistics_stay_bounded():
    from engines.scheduler import BATCH_SIZES_KEPT

    eng = FakeEngine()
    with BatchingScheduler(eng, max_batch_size=1, max_wait_ms=0, max_queue=100) as s:
        s.batch_sizes.extend([1] * (BATCH_SIZES_KEPT + 10))  # as if that many batches had run
        s.submit(GenerationRequest("last")).result(timeout=10)
        assert len(s.batch_sizes) == BATCH_SIZES_KEPT and s.batches_run == 1


def test_importing_engines_sets_nothing_and_the_entry_points_tune_openmp():
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    code = ("import os, engines, engines.spec, engines.types; before = os.environ.get('GOMP_SPINCOUNT'); "
            "engines.tune_openmp(); print(before, os.environ.get('GOMP_SPINCOUNT'))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", "20000"]
