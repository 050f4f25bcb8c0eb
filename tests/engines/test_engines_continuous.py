import threading
import time

from engines import ContinuousBatchingScheduler, GenerationRequest, GenerationResult
from engines.types import InvalidRequest, PromptTooLong

import pytest


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4"])
def test_continuous_matches_static_results(tiny_engines, one_int4_kernel, name):
    eng = tiny_engines[name]
    prompts = [f"def g{i}(a, b):\n    return a * {i} + b" * (1 + i % 3) for i in range(6)]
    lens = [3, 17, 8, 25, 1, 12]
    reqs = [GenerationRequest(p, max_new_tokens=n) for p, n in zip(prompts, lens)]
    expected = [r.text for r in eng.generate(reqs)]
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=5, idle_gap_ms=5) as s:
        futs = [s.submit(r) for r in reqs]
        res = [f.result(60) for f in futs]
    assert [r.text for r in res] == expected
    assert all(isinstance(r, GenerationResult) for r in res)
    assert max(r.batch_size for r in res) > 1


def test_continuous_requests_join_and_leave(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    with ContinuousBatchingScheduler(eng, max_batch_size=8, max_wait_ms=1, idle_gap_ms=1) as s:
        long = s.submit(GenerationRequest("import os", max_new_tokens=120))
        time.sleep(0.05)
        shorts = [s.submit(GenerationRequest(f"x = {i}", max_new_tokens=3)) for i in range(3)]
        done_short = [f.result(60) for f in shorts]
        assert not long.done() or long.result().completion_tokens == 120  # shorts finished while long ran
        lr = long.result(60)
    assert all(r.completion_tokens <= 3 for r in done_short)
    assert lr.completion_tokens <= 120
    assert max(r.batch_size for r in done_short) >= 2  # they joined the running decode


def test_continuous_errors_and_threads(tiny_engines):
    eng = tiny_engines["v2-int4"]
    with ContinuousBatchingScheduler(eng, max_batch_size=6, max_wait_ms=5, idle_gap_ms=5) as s:
        bad = s.submit(GenerationRequest("y" * 6000, max_new_tokens=2))
        zero = s.submit(GenerationRequest("ok", max_new_tokens=0))
        results = {}

        def worker(k):
            results[k] = s.submit(GenerationRequest(f"value_{k} = {k}", max_new_tokens=5 + k % 4, seed=k,
                                                    temperature=0.7)).result(60)

        threads = [threading.Thread(target=worker, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        with pytest.raises(PromptTooLong):
            bad.result(10)
        with pytest.raises(InvalidRequest):
            zero.result(10)
    assert len(results) == 10
    assert all(1 <= r.completion_tokens <= 8 for r in results.values())
    # seeded sampling is reproducible in any batch company
    again = eng.generate([GenerationRequest("value_3 = 3", max_new_tokens=8, seed=3, temperature=0.7)])[0]
    assert again.text == results[3].text


@pytest.mark.parametrize("kind", ["static", "continuous"])
def test_the_spec_chooses_the_serving_scheduler(tiny_specs, tiny_engines, kind):
    """workers' EngineHost (embedded and Celery serving) builds the scheduler the spec names,
    and both give the engine's own greedy text."""
    import dataclasses

    from engines import BatchingScheduler
    from workers.host import EngineHost

    spec = dataclasses.replace(tiny_specs["v1-fp32"], scheduler=kind)
    host = EngineHost({"v1-fp32": spec})
    request = GenerationRequest("def f(x):", max_new_tokens=6)
    try:
        scheduler = host.scheduler("v1-fp32")
        assert type(scheduler) is (ContinuousBatchingScheduler if kind == "continuous" else BatchingScheduler)
        assert scheduler.submit(request).result(60).text == tiny_engines["v1-fp32"].generate([request])[0].text
    finally:
        host.close()


def test_an_unknown_scheduler_is_refused_by_name():
    from engines import EngineSpec

    with pytest.raises(ValueError, match="field 'scheduler' must be one of"):
        EngineSpec(name="e", checkpoint="c", scheduler="eager")
    with pytest.raises(ValueError, match="prefill_chunk"):
        EngineSpec(name="e", checkpoint="c", prefill_chunk=0)


def test_continuous_results_carry_their_compute_share(tiny_engines):
    """Each request is charged its share of the prefills and decode steps it ran in (the cost
    metrics price it), as in a static batch."""
    eng = tiny_engines["v1-fp32"]
    requests = [GenerationRequest(f"x = {i}", max_new_tokens=4 + i) for i in range(4)]
    static = eng.generate(requests)
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=5, idle_gap_ms=5) as s:
        results = [f.result(60) for f in [s.submit(r) for r in requests]]
    assert all(r.compute_ms is not None and r.compute_ms > 0 for r in results + static)
    assert all(r.compute_ms <= r.total_ms + 1e-6 for r in results)


LONG = "def add(a, b):\n    return a + b\n\nclass Stack:\n    def push(self, x):\n        self.items.append(x)\n" * 4


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4"])
def test_chunked_prefill_gives_the_static_batchs_tokens(tiny_engines, name):
    eng = tiny_engines[name]
    assert len(eng.encode(LONG)) > 5 * 16
    requests = [GenerationRequest(LONG + f"# {i}", max_new_tokens=6 + i) for i in range(3)]
    requests.append(GenerationRequest("x = 1", max_new_tokens=5))
    expected = [r.token_ids for r in eng.generate(requests)]
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=5, idle_gap_ms=5, prefill_chunk=16) as s:
        got = [f.result(120).token_ids for f in [s.submit(r) for r in requests]]
        assert s.prefill_chunks_run >= 3 * 5
    assert got == expected


def test_a_long_prompt_joining_stalls_running_decodes_by_one_chunk_at_most(tiny_engines):
    """Between two chunks of a joining long prompt, the running request takes a decode step."""
    eng = tiny_engines["v1-fp32"]
    seen: list[int] = []

    class Watched(ContinuousBatchingScheduler):
        def _prefill_step(self):
            running = [lv for lv in self._live if lv.row.req.prompt == "import os"]
            seen.append(len(running[0].row.gen) if running else -1)
            super()._prefill_step()

    with Watched(eng, max_batch_size=4, max_wait_ms=1, idle_gap_ms=1, prefill_chunk=16) as s:
        running = s.submit(GenerationRequest("import os", max_new_tokens=150))
        while s.steps_run < 3:
            time.sleep(0.005)
        joining = s.submit(GenerationRequest(LONG, max_new_tokens=3))
        assert joining.result(120).completion_tokens == 3
        running.result(120)
    chunks = [n for n in seen if n >= 0]
    assert len(chunks) >= 5 and all(b == a + 1 for a, b in zip(chunks, chunks[1:]))  # one step per chunk


def test_a_caller_that_leaves_during_a_long_prefill_ends_expired(tiny_engines):
    from engines.scheduler import Expired

    eng = tiny_engines["v1-fp32"]

    class Leaving(ContinuousBatchingScheduler):
        def _prefill_step(self):
            if self.prefill_chunks_run == 2:  # the caller's deadline passes after two chunks
                self._prefilling[0].live.pending.deadline = time.time() - 1
            super()._prefill_step()

    with Leaving(eng, max_batch_size=4, max_wait_ms=1, idle_gap_ms=1, prefill_chunk=16) as s:
        future = s.submit(GenerationRequest(LONG, max_new_tokens=3), deadline=time.time() + 600)
        with pytest.raises(Expired):
            future.result(60)
        assert s.prefill_chunks_run == 2  # it left mid-prefill, its remaining chunks never ran
        assert s.submit(GenerationRequest("x = 2", max_new_tokens=2)).result(60).completion_tokens == 2


def test_a_request_whose_deadline_passed_in_the_queue_never_runs(tiny_engines):
    from engines.scheduler import Expired

    eng = tiny_engines["v1-fp32"]
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=1, idle_gap_ms=1, prefill_chunk=16) as s:
        future = s.submit(GenerationRequest(LONG, max_new_tokens=3), deadline=time.time() - 1)
        with pytest.raises(Expired, match="before the request ran"):
            future.result(60)
        assert s.prefill_chunks_run == 0 and s.steps_run == 0


@pytest.mark.parametrize("name", ["v1-fp32", "v2-int4"])
def test_the_decode_cache_stays_within_the_kv_budget(tiny_engines, one_int4_kernel, name):
    """Room for three rows: eight requests run three at a time at most, the rest wait their turn
    (in order), and each gets the tokens it gets alone."""
    eng = tiny_engines[name]
    requests = [GenerationRequest(f"value_{i} = {i} +", max_new_tokens=12) for i in range(8)]
    need_t = max(len(eng.encode(r.prompt)) for r in requests) + 12
    budget = eng.runner.kv_bytes(need_t, 3)
    alone = [eng.generate([r])[0].token_ids for r in requests]
    with ContinuousBatchingScheduler(eng, max_batch_size=8, max_wait_ms=20, idle_gap_ms=20,
                                     kv_budget_gb=budget / 2**30) as s:
        results = [f.result(120) for f in [s.submit(r) for r in requests]]
        assert s.kv_waits >= 5
        assert 0 < s.kv_peak_bytes <= budget
        assert s.queue_depth() == 0
    assert [r.token_ids for r in results] == alone
    assert max(r.batch_size for r in results) == 3
    assert [r.queue_ms for r in results[3:]] > [0.0] * 5 and results[-1].queue_ms > results[0].queue_ms


def test_a_lone_request_larger_than_the_kv_budget_still_runs(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    request = GenerationRequest("x = 1", max_new_tokens=6)
    with ContinuousBatchingScheduler(eng, max_batch_size=4, max_wait_ms=1, idle_gap_ms=1, kv_budget_gb=1e-9) as s:
        assert s.submit(request).result(60).token_ids == eng.generate([request])[0].token_ids
        two = [s.submit(GenerationRequest(f"y = {i}", max_new_tokens=4)) for i in range(2)]
        assert [f.result(60).batch_size for f in two] == [1, 1]  # over budget together: one at a time
    with pytest.raises(ValueError, match="kv_budget_gb"):
        ContinuousBatchingScheduler(eng, kv_budget_gb=0)


def test_newcomers_gather_while_many_rows_decode(tiny_engines):
    """One newcomer beside eight decoding rows waits a few decode steps (its prefill pass is
    shared with whoever comes meanwhile); two, a quarter of the rows, are admitted at once."""
    eng = tiny_engines["v1-fp32"]
    admitted: list[int] = []

    class Watched(ContinuousBatchingScheduler):
        def _admit(self, pendings):
            if pendings:
                admitted.append(self.steps_run)
            super()._admit(pendings)

    with Watched(eng, max_batch_size=16, max_wait_ms=20, idle_gap_ms=20) as s:
        running = [s.submit(GenerationRequest(f"import os{i}", max_new_tokens=200)) for i in range(8)]
        while s.steps_run < 3:
            time.sleep(0.002)
        admitted.clear()
        at = s.steps_run
        one = s.submit(GenerationRequest("x = 1", max_new_tokens=2))
        one.result(60)
        assert admitted[0] - at >= 2  # it waited for decode steps to pass
        admitted.clear()
        at = s.steps_run
        two = [s.submit(GenerationRequest(f"y = {i}", max_new_tokens=2)) for i in range(2)]
        [f.result(60) for f in two]
        assert admitted[0] - at <= 1 and len(admitted) == 1  # together, at the next iteration
        for f in running:
            f.cancel() or f.result(60)
