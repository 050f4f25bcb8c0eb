"""Streaming text deltas: each request's text handed out as it is decoded, in shared batches."""

import threading

import pytest

from engines import BatchingScheduler, GenerationRequest
from engines.continuous import ContinuousBatchingScheduler
from engines.scheduler import Expired
from engines.streaming import TextDeltas


class Collector:
    def __init__(self):
        self.parts = []
        self.first = threading.Event()

    def __call__(self, delta):
        self.parts.append(delta)
        self.first.set()


@pytest.mark.parametrize("scheduler", [BatchingScheduler, ContinuousBatchingScheduler])
def test_deltas_join_up_to_the_text_and_plain_requests_share_the_batch(tiny_engines, scheduler):
    eng = tiny_engines["v1-fp32"]
    with scheduler(eng, max_batch_size=8, max_wait_ms=200, idle_gap_ms=200) as s:
        streamed, sampled = Collector(), Collector()
        f1 = s.submit(GenerationRequest("hello there", max_new_tokens=24), on_text=streamed)
        f2 = s.submit(GenerationRequest("hello there", max_new_tokens=24))
        f3 = s.submit(GenerationRequest("once upon", max_new_tokens=24, temperature=0.9, seed=7), on_text=sampled)
        r1, r2, r3 = (f.result(timeout=60) for f in (f1, f2, f3))
    assert "".join(streamed.parts) == r1.text == r2.text  # the stream changes nothing of the result
    assert "".join(sampled.parts) == r3.text
    assert len(streamed.parts) > 1  # handed out piece by piece, not at the end
    assert r1.batch_size == 3


def test_stop_strings_are_never_streamed(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    with BatchingScheduler(eng, max_batch_size=4, max_wait_ms=0) as s:
        full = s.submit(GenerationRequest("the cat", max_new_tokens=30)).result(timeout=60)
        assert len(full.text) > 6
        stop = full.text[3:6]
        got = Collector()
        cut = s.submit(GenerationRequest("the cat", max_new_tokens=30, stop=(stop,)), on_text=got).result(timeout=60)
    assert stop not in cut.text and "".join(got.parts) == cut.text
    assert cut.finish_reason == "stop"


def test_abandoned_stream_leaves_the_batch_at_the_next_step(tiny_engines):
    eng = tiny_engines["v1-fp32"]
    with BatchingScheduler(eng, max_batch_size=4, max_wait_ms=0) as s:
        holder = {}

        def leave_after_first(delta):
            holder["future"].abandon()  # the client went away after its first piece

        fut = s.submit(GenerationRequest("a long story", max_new_tokens=200), on_text=leave_after_first)
        holder["future"] = fut
        other = s.submit(GenerationRequest("a long story", max_new_tokens=200))
        with pytest.raises(Expired):
            fut.result(timeout=60)
        assert other.result(timeout=60).completion_tokens > 2


def test_text_deltas_hold_back_partial_characters_and_stop_prefixes():
    texts = {1: "ab\ufffd", 2: "abc", 3: "abcdX"}
    got = []
    d = TextDeltas(got.append, lambda ids: texts[len(ids)], stop=("XY",))
    d.step([0])
    d.step([0, 0])
    d.step([0, 0, 0])
    d.finish("abcdX")
    assert got == ["a", "b", "cd", "X"]  # never the partial character; the possible stop start last
    d.finish("abcdX")
    assert got == ["a", "b", "cd", "X"]  # once


def test_a_failing_sink_is_dropped():
    calls = []

    def boom(delta):
        calls.append(delta)
        raise RuntimeError("listener gone")

    d = TextDeltas(boom, lambda ids: "x" * len(ids))
    d.step([1])
    d.step([1, 2])
    assert calls == ["x"]
