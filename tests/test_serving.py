"""The serving loop on the tiny model (fp32): continuous batching is exact, sessions fork and join
the branch KV exactly, prompt log-probs, the prefix cache, and what bad or cancelled requests free."""

from __future__ import annotations

import queue
import time

import pytest
import torch

from runtime.engine import Engine, EngineError
from runtime.http_errors import status_of
from runtime.sampling import SamplingParams
from runtime.serving import Event, LogprobSpec, Request, ServeConfig, ServingLoop
from tests.model_util import tiny_model

GREEDY = SamplingParams(max_new_tokens=10, ignore_eos=True, repetition_penalty=1.1)


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_positions=256)


@pytest.fixture
def loop(model):
    lp = ServingLoop(Engine(model), ServeConfig(max_running=8, max_waiting=4)).start()
    yield lp
    lp.stop()


def submit(lp: ServingLoop, text: str | None = None, params: SamplingParams = GREEDY, **kw) -> queue.Queue:
    q: queue.Queue[Event] = queue.Queue()
    lp.submit(Request(params=params, emit=q.put, text=text, **kw))
    return q


def last(q: queue.Queue) -> Event:
    while True:
        ev = q.get(timeout=60)
        if ev.done:
            return ev


def stats(lp: ServingLoop) -> dict:
    return lp.call(lp.stats).result(timeout=60)


PROMPTS = ["tips: eat well", "tips: sleep", "a list of things", "why is the sky blue?", "x"]


def test_concurrent_requests_equal_the_same_requests_alone(loop):
    alone = [last(submit(loop, p)).result.output.text for p in PROMPTS]
    before = stats(loop)
    together = [last(q).result.output.text for q in [submit(loop, p) for p in PROMPTS]]
    after = stats(loop)
    assert together == alone
    steps = after["steps"] - before["steps"]
    assert steps < len(PROMPTS) * GREEDY.max_new_tokens  # they shared forward passes
    assert after["live_sequences"] == 0 and after["running"] == 0


def test_graft_equals_the_in_process_join(model):
    """Branches decoded as separate sequences (forked copies), grafted back: the same cache, mask and
    positions as a plain block joined inside one sequence. Next-token logits agree, and both equal
    one full forward over the written sequence."""
    eng = Engine(model)
    p = GREEDY.model_copy(update={"max_new_tokens": 6})
    # in-process: one sequence, a plain block
    seq = eng.new_sequence("notes:\n")
    eng.open_block(seq)
    for seed in ("one,", "two:"):
        eng.add_branch(seq, seed)
    eng.decode_branches(seq, {0: p, 1: p})
    eng.join(seq)
    eng.extend(seq, "\nso")
    ref = eng.next_logits(seq)
    # across sequences: copies of the parent, each decoded alone, grafted onto the parent
    parent = eng.new_sequence("notes:\n")
    eng.prefill(parent)
    kids = []
    for seed in ("one,", "two:"):
        kid = eng.copy_sequence(parent)
        eng.extend(kid, seed)
        eng.generate(kid, p, "ar")
        kids.append(kid)
    eng.graft(parent, kids)
    eng.extend(parent, "\nso")
    assert eng.text(parent) == eng.text(seq)
    got = eng.next_logits(parent)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    toks, tags = parent.written_sequence()
    from runtime.protocol import layout

    full = eng.runner.full_forward(toks, tags, layout(tags))[-1]
    torch.testing.assert_close(got, full, atol=1e-4, rtol=0)


def test_graft_refuses_what_is_not_a_branch(model):
    eng = Engine(model)
    parent = eng.new_sequence("abc")
    other = eng.new_sequence("xyz and more")
    with pytest.raises(EngineError, match="does not continue"):
        eng.graft(parent, [other])


def test_sessions_continue_and_fork_without_recomputing(loop):
    first = last(submit(loop, "the plan:", rid="p")).result
    assert first.cached_tokens == 0
    text = "the plan:" + first.output.text
    again = last(submit(loop, text + " more", rid="p")).result  # the same session, extended
    assert again.cached_tokens == first.prompt_tokens + first.output.completion_tokens
    branch = last(submit(loop, text + " more" + again.output.text + " b1", rid="b1")).result
    assert branch.cached_tokens == again.prompt_tokens + again.output.completion_tokens  # forked off "p"
    assert stats(loop)["sessions"] == 2
    loop.call(lambda: loop.join(["b1"], "p")).result()
    assert stats(loop)["sessions"] == 1
    with pytest.raises(EngineError, match="unknown rid"):
        loop.call(lambda: loop.join(["nope"], "p")).result()
    assert loop.call(lambda: loop.abort("p")).result()
    s = stats(loop)
    assert s["sessions"] == 0 and s["live_sequences"] == 0


def test_prompt_logprobs_equal_the_engines_scores(loop, model):
    eng = Engine(model)
    prompt, choice = "answer: ", "yes"
    n = len(eng.encode(prompt))
    res = last(submit(loop, prompt + choice, GREEDY.model_copy(update={"max_new_tokens": 0}),
                      logprobs=LogprobSpec(start=n, top=2))).result
    lps = res.input_logprobs
    assert [t for _, t, _ in lps] == eng.encode(choice)
    want = eng.score(eng.new_sequence(prompt), [choice])[0]
    assert [lp for lp, _, _ in lps] == pytest.approx(want, abs=1e-5)
    assert all(len(alts) == 2 and alts[0][0] >= lp for lp, _, alts in lps)
    assert res.output.completion_tokens == 0


def test_the_prefix_cache_saves_prefill(model):
    shared = "a long shared system prompt that every request starts with. "
    counts = {}
    for budget in (0, 4096):
        lp = ServingLoop(Engine(model), ServeConfig(cache_tokens=budget)).start()
        try:
            outs = [last(submit(lp, shared + q)).result for q in ("one", "two", "three")]
            counts[budget] = stats(lp)["prefill_tokens"]
        finally:
            lp.stop()
        assert (outs[1].cached_tokens > 0) == (budget > 0)
    assert counts[4096] < counts[0] - 2 * len(shared) + 10


def test_bad_requests_are_refused_and_leave_nothing(loop):
    too_long = last(submit(loop, "word " * 100, GREEDY.model_copy(update={"max_new_tokens": 10})))
    assert status_of(too_long.outcome) == 400 and "context window is 256" in too_long.error
    empty = last(submit(loop, ""))
    assert status_of(empty.outcome) == 400 and "empty" in empty.error
    s = stats(loop)
    assert s["live_sequences"] == 0 and s["running"] == 0 and s["waiting"] == 0


def test_a_full_queue_answers_429(model):
    lp = ServingLoop(Engine(model), ServeConfig(max_running=1, max_waiting=1)).start()
    try:
        long = GREEDY.model_copy(update={"max_new_tokens": 60})
        qs = [submit(lp, f"request {i}", long) for i in range(4)]
        evs = [last(q) for q in qs]
        assert sorted(status_of(e.outcome) for e in evs) == [200, 200, 429, 429]
        assert stats(lp)["rejected"] == 2
    finally:
        lp.stop()


def test_cancel_frees_the_sequence(loop):
    q = submit(loop, "stream me", GREEDY.model_copy(update={"max_new_tokens": 200}), stream=True)
    req_events = q.get(timeout=60)
    assert not req_events.done
    # the Request object is needed to cancel: find it among the running ones
    running = loop.call(lambda: loop.scheduler.running_requests()).result()
    assert len(running) == 1
    loop.cancel(running[0])
    s = stats(loop)
    assert s["cancelled"] == 1 and s["running"] == 0 and s["live_sequences"] == 0


def test_complete_answers_every_prompt_once_as_alone(model):
    from runtime.offline import complete

    eng = Engine(model)
    prompts = [eng.encode(p) for p in PROMPTS]
    got = dict(complete(Engine(model), prompts, GREEDY, batch=3))
    assert sorted(got) == list(range(len(PROMPTS)))
    alone = [eng.generate(eng.new_sequence(p), GREEDY, "ar").text for p in prompts]
    assert [got[i].result.output.text for i in range(len(PROMPTS))] == alone


def test_chunked_prefill_is_exact_and_lets_decodes_run_between_chunks(model):
    """A prompt fed 7 tokens a forward gives the same prompt log-probs and the same answer as one fed
    whole, and a running stream keeps decoding while it is fed (not while a whole prompt is)."""
    prompt = "a long prompt, long enough to take several chunks of seven tokens each. " * 2
    spec = LogprobSpec(start=3, top=2)
    got, during = {}, {}
    for chunk in (7, 4096):
        lp = ServingLoop(Engine(model), ServeConfig(prefill_chunk=chunk, cache_tokens=0)).start()
        try:
            got[chunk] = last(submit(lp, prompt, logprobs=spec)).result
            times: list[float] = []
            lp.submit(Request(params=GREEDY.model_copy(update={"max_new_tokens": 200}), text="a stream",
                              emit=lambda ev, ts=times: ts.append(time.perf_counter()), stream=True))
            while len(times) < 3:  # it is decoding
                time.sleep(0.001)
            t0 = time.perf_counter()
            first = submit(lp, prompt, stream=True).get(timeout=60)  # after its prefill and one step
            t1 = time.perf_counter()
            assert first.error is None
            during[chunk] = sum(t0 < t < t1 for t in list(times))
        finally:
            lp.stop()
    assert during[7] >= 10 and during[4096] <= 4, during  # a step or two until its first text
    a, b = got[7], got[4096]
    assert a.output.text == b.output.text
    assert [t for _, t, _ in a.input_logprobs] == [t for _, t, _ in b.input_logprobs]
    for (x, _, xa), (y, _, ya) in zip(a.input_logprobs, b.input_logprobs):
        assert (x is None) == (y is None) and (x is None or x == pytest.approx(y, abs=1e-4))
        assert [t for _, t in xa] == [t for _, t in ya]
