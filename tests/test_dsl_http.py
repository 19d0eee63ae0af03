"""DSL programs and hand-written SGLang programs against `aspd serve` in this process (uvicorn in a
thread, tiny model, fp32) through `AspdEndpoint`: KV joins whatever the program's shape, backend
errors that end the program instead of hanging it, and seeds."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sglang as sgl

from aspd_lang import gen, program
from aspd_lang.http_backend import AspdEndpoint
from aspd_lang.interpreter_guard import ProgramRunError
from aspd_lang.native_backend import NativeBackend
from aspd_lang.runner import Runner, display_pieces, load_program_file
from runtime.engine import Engine
from tests.dsl_util import DEFAULTS, check_stream_events, fork_join, text_then_fork
from tests.model_util import tiny_model
from tests.serve_util import idle, serve_in_thread, within

DEADLINE_S = 60  # a hang fails the test instead of blocking the suite


@pytest.fixture(scope="module")
def model():
    return tiny_model(max_positions=4096)


@pytest.fixture(scope="module")
def server(model):
    with serve_in_thread(Engine(model), defaults=DEFAULTS, max_running=8, max_waiting=8) as (url, loop):
        yield url, loop


def within_deadline(fn):
    """fn() within DEADLINE_S, or a failed test (a hang)."""
    return within(DEADLINE_S, fn)


TEXT_THEN_FORK = text_then_fork(2, 4)  # no gen before the fork: SGLang may fork before committing the text


def test_kv_join_after_text_only_prefix_returns_and_joins_on_the_server(server, model):
    url, _ = server

    def go():
        state = TEXT_THEN_FORK.run(topic="tea", backend=AspdEndpoint(url))
        return state, state.text(), state.error()

    state, text, error = within_deadline(go)
    assert error is None, error
    ref = TEXT_THEN_FORK.run(topic="tea", backend=NativeBackend(Engine(model), DEFAULTS))
    assert (text, state["tail"]) == (ref.text(), ref["tail"])  # the join was the server's KV join, no 404
    del state  # SGLang ends the program when its state is dropped: the server frees its sessions
    assert idle(url)["sessions"] == 0


@sgl.function
def failing_branch(s):
    s += "docs:"
    forks = s.fork(2)
    forks[0] += " short" + sgl.gen("p", max_tokens=3, temperature=0)
    forks[1] += " " + "w" * 5000 + sgl.gen("p", max_tokens=3, temperature=0)  # over the context window
    forks.join("concate_and_append")
    s += " then" + sgl.gen("tail", max_tokens=4, temperature=0)


@pytest.mark.filterwarnings("ignore:Error in stream_executor")
def test_a_backend_error_ends_the_program_with_that_error_not_a_hang(server):
    url, _ = server
    with pytest.raises(ProgramRunError) as e:
        within_deadline(lambda: failing_branch.run(backend=AspdEndpoint(url)).text())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("gen('p') failed: 400") and "context window" in msg
    idle(url)


@program
def sampled(s, topic):
    s += f"on {topic}:" + gen("intro", max_tokens=6, temperature=1.0, ignore_eos=True)
    with s.parallel(["a", "b"]) as br:
        br[0] += " one" + gen("x", max_tokens=6, temperature=1.0, ignore_eos=True)
        br[1] += " two" + gen("y", max_tokens=6, temperature=1.0, ignore_eos=True)
    s += " so" + gen("after", max_tokens=6, temperature=1.0, ignore_eos=True)


def test_seed_makes_sglang_runs_reproducible_and_equal_to_the_in_process_ones(server, model):
    url, _ = server
    seeded = DEFAULTS.model_copy(update={"seed": 7})
    runs = [Runner("sglang", seeded, url=url).run(sampled, {"topic": "tea"}) for _ in range(2)]
    assert (runs[0].text, runs[0].variables) == (runs[1].text, runs[1].variables)
    native = Runner("native", seeded, engine=Engine(model)).run(sampled, {"topic": "tea"})
    engine = Runner("engine", seeded, engine=Engine(model)).run(sampled, {"topic": "tea"})
    assert (native.text, native.variables) == (engine.text, engine.variables)
    assert (runs[0].text, runs[0].variables) == (native.text, native.variables)
    other = Runner("sglang", DEFAULTS.model_copy(update={"seed": 8}), url=url).run(sampled, {"topic": "tea"})
    assert other.text != runs[0].text  # the seed is what makes them equal


def test_a_list_argument_shapes_the_program_the_same_on_every_backend(server, model):
    pf = load_program_file(Path(__file__).parents[1] / "programs" / "city_guides.py")
    args = {"cities": ["Lima", "Oslo", "Pune", "Rome"]}
    url, _ = server
    runs = {"sglang": Runner("sglang", DEFAULTS, url=url).run(pf.main, args),
            "native": Runner("native", DEFAULTS, engine=Engine(model)).run(pf.main, args),
            "engine": Runner("engine", DEFAULTS, engine=Engine(model)).run(pf.main, args)}
    ref = runs["engine"]
    assert [f"sight{i}" in ref.variables for i in range(4)] == [True] * 4 and ref.variables["best"] in args["cities"]
    for name, res in runs.items():
        assert (res.text, res.variables) == (ref.text, ref.variables), name
    block = next(p for p in display_pieces(pf.main.ir(**args), ref) if p.kind == "parallel")
    assert block.titles == tuple(args["cities"])


@program
def typed(s):
    s += "n=" + gen("n", regex="[0-9]{2}", max_tokens=6)
    with s.parallel(["a", "b"]) as br:
        br[0] += " a=" + gen("a", regex="(yes|no)", max_tokens=4)
        br[1] += " b=" + gen("b", json_schema='{"type": "integer"}', max_tokens=4)
    s += " c=" + gen("c", choices=["red", "green", "a.b"], max_tokens=6)


def test_constrained_gens_match_their_grammar_on_every_backend(server, model):
    url, _ = server
    runs = {"sglang": Runner("sglang", DEFAULTS, url=url).run(typed, {}),
            "native": Runner("native", DEFAULTS, engine=Engine(model)).run(typed, {}),
            "engine": Runner("engine", DEFAULTS, engine=Engine(model)).run(typed, {})}
    ref = runs["engine"].variables
    assert re.fullmatch("[0-9]{2}", ref["n"]) and ref["a"] in ("yes", "no") and re.fullmatch("-?[0-9]+", ref["b"])
    assert ref["c"] in ("red", "green", "a.b")
    for name, res in runs.items():
        assert res.variables == ref, name


@program
def adaptive(s, bias):
    s += "list three tips:\n" + gen("tips", max_tokens=120, adaptive=True, fork_bias=bias)


def test_fork_bias_and_the_adaptive_answer_are_the_same_on_every_backend(server, model):
    """`fork_bias` reaches the engine on every backend (+100 opens a block at once, -100 never does);
    the answer variable is the rendered answer (branches led by their titles) and the display shows
    the same block everywhere."""
    url, _ = server
    for bias, forks in ((100.0, True), (-100.0, False)):
        runs = {"sglang": Runner("sglang", DEFAULTS, url=url).run(adaptive, {"bias": bias}),
                "native": Runner("native", DEFAULTS, engine=Engine(model)).run(adaptive, {"bias": bias}),
                "engine": Runner("engine", DEFAULTS, engine=Engine(model)).run(adaptive, {"bias": bias})}
        ref = runs["engine"]
        pieces = display_pieces(adaptive.ir(bias=bias), ref)
        blocks = [p for p in pieces if p.kind == "parallel"]
        assert bool(blocks) == forks, bias
        for p in blocks:  # every branch's title is in the answer, at its branch
            for t, body in zip(p.titles, p.branches):
                assert body.strip() in ref.variables["tips"] and t in ref.variables["tips"]
        for name, res in runs.items():
            assert (res.text, res.variables) == (ref.text, ref.variables), (name, bias)
            assert display_pieces(adaptive.ir(bias=bias), res) == pieces, (name, bias)


def test_fork_bias_on_a_gen_that_is_not_adaptive_is_refused():
    @program
    def plain(s):
        s += "q" + gen("a", max_tokens=4, fork_bias=2.0)

    with pytest.raises(Exception, match="fork_bias applies to an adaptive gen.*add adaptive=True"):
        plain.ir()


def test_stream_over_http_reports_each_value_and_branch_and_ends_with_the_runs_result(server):
    url, _ = server
    ref = Runner("sglang", DEFAULTS, url=url).run(fork_join, {"topic": "tea"})
    events = within_deadline(lambda: list(fork_join.stream(backend="sglang", url=url, sampling=DEFAULTS, topic="tea")))
    check_stream_events(events, ref, "sglang")
