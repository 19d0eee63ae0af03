"""Streaming and async runs (`Program.stream`, `.astream`, `.arun`) on the in-process backends (tiny
model, fp32): the events add up to the run's result, which equals a plain `run`."""

from __future__ import annotations

import asyncio

import pytest

from aspd_lang import gen, program
from aspd_lang.interpreter_guard import ProgramRunError
from aspd_lang.runner import Runner
from runtime.engine import Engine
from tests.dsl_util import DEFAULTS, check_stream_events, fork_join
from tests.model_util import JSON_CHARS, tiny_model


@pytest.fixture(scope="module")
def eng() -> Engine:
    return Engine(tiny_model(max_positions=4096, chars=JSON_CHARS))


@pytest.mark.parametrize("backend", ["engine", "native"])
def test_stream_reports_progress_and_ends_with_the_runs_result(eng, backend):
    ref = Runner(backend, DEFAULTS, engine=eng).run(fork_join, {"topic": "tea"})
    events = list(fork_join.stream(backend=backend, engine=eng, sampling=DEFAULTS, topic="tea"))
    check_stream_events(events, ref, backend)


def test_astream_and_arun_give_the_same_as_stream_and_run(eng):
    async def main():
        events = [e async for e in fork_join.astream(backend="engine", engine=eng, sampling=DEFAULTS, topic="tea")]
        result = await fork_join.arun(backend="engine", engine=eng, sampling=DEFAULTS, topic="tea")
        return events, result

    events, result = asyncio.run(main())
    ref = Runner("engine", DEFAULTS, engine=eng).run(fork_join, {"topic": "tea"})
    assert (result.text, result.variables) == (ref.text, ref.variables)
    again = list(fork_join.stream(backend="engine", engine=eng, sampling=DEFAULTS, topic="tea"))
    assert events[:-1] == again[:-1]  # the same events; the results differ only in their timings
    assert (events[-1].result.text, events[-1].result.variables) == (ref.text, ref.variables)


@program
def adaptive(s):
    s += "list three tips:\n" + gen("tips", max_tokens=120, adaptive=True, fork_bias=100.0)


def test_an_adaptive_gen_streams_its_text_and_its_own_blocks_branches(eng):
    events = list(adaptive.stream(backend="engine", engine=eng, sampling=DEFAULTS))
    result = events[-1].result
    assert result.blocks >= 1
    assert "".join(e.text for e in events if e.kind == "text") == result.variables["tips"]
    titles = {e.title for e in events if e.kind == "branch"}
    block = next(g.response for g in result.gens if g.response).blocks[0]
    assert set(block.titles) <= titles


@program
def too_long(s, doc):
    s += "docs:\n" + doc + gen("x", max_tokens=3)


@pytest.mark.filterwarnings("ignore:Error in stream_executor")
@pytest.mark.parametrize("backend", ["engine", "native"])
def test_a_failing_run_raises_from_the_iterator(eng, backend):
    it = too_long.stream(backend=backend, engine=eng, sampling=DEFAULTS, doc="x" * 5000)
    with pytest.raises((ProgramRunError, Exception), match="context window"):
        list(it)
    with pytest.raises(Exception, match="missing"):  # a check fails before anything runs
        too_long.stream(backend=backend, engine=eng)
