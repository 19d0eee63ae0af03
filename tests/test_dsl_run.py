"""DSL programs running on the tiny model (fp32): the conformance suite over every backend that runs
here, exact branches and joins, SGLang's own interpreter on NativeBackend, and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import sglang as sgl
import torch

from aspd_lang import ProgramError, gen, program
from aspd_lang.executor import EngineExecutor, bind
from aspd_lang.native_backend import BackendError, NativeBackend
from aspd_lang.runner import Runner, display_pieces, load_program_file
from aspd_lang.sglang_compile import to_sglang
from runtime import protocol as P
from runtime.engine import Engine
from runtime.sampling import SamplingParams
from tests.dsl_util import DEFAULTS, PROGRAMS, fork_join, text_then_fork
from tests.model_util import JSON_CHARS, tiny_model


@pytest.fixture(scope="module")
def eng() -> Engine:
    return Engine(tiny_model(max_positions=4096, chars=JSON_CHARS))  # a character-level tokenizer makes long texts


def _runs(eng):
    """The same programs on every in-process backend, parallel and serial."""
    return {f"{b}{'-serial' if ser else ''}": (Runner(b, DEFAULTS, engine=eng), ser)
            for b in ("engine", "native") for ser in (False, True)}


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_every_example_program_runs_the_same_on_every_backend(eng, path):
    pf = load_program_file(path)
    args = pf.batch(**pf.args)[0] if pf.batch else pf.args
    results = {name: r.run(pf.main, args, serial=ser) for name, (r, ser) in _runs(eng).items()}
    ref = results["engine"]
    assert ref.completion_tokens > 0 and ref.text
    for name, res in results.items():
        assert res.text == ref.text, name
        assert res.variables == ref.variables, name
    assert display_pieces(pf.main.ir(**args), ref)  # renders
    assert pf.doc  # each program says what it shows


def test_fork_join_conformance_and_branches_equal_alone(eng):
    results = {name: r.run(fork_join, {"topic": "tea"}, serial=ser) for name, (r, ser) in _runs(eng).items()}
    ref = results["engine"]
    for name, res in results.items():
        assert (res.text, res.variables) == (ref.text, ref.variables), name

    @program
    def alone(s, topic):  # branch b on its own: the prefix, then only its text
        s += f"notes on {topic}:\n" + "second thing," + gen("y", max_tokens=9, ignore_eos=True)
        s += " and" + gen("y2", max_tokens=4)

    solo = EngineExecutor(eng, DEFAULTS).run(alone, topic="tea")
    assert (solo.variables["y"], solo.variables["y2"]) == (ref.variables["y"], ref.variables["y2"])
    assert ref.text.startswith("notes on tea:\nfirst," + ref.variables["x"] + "second thing,")


def test_kv_join_is_exact_after_a_program_block(eng):
    """After the join, the next-token logits equal one forward over the joined sequence with the
    protocol's mask and positions: the KV splice loses nothing."""
    ex = EngineExecutor(eng, DEFAULTS)
    ex.run(fork_join, topic="tea")
    seq = ex.last_sequence
    logits = eng.next_logits(seq)
    tokens, tags = seq.written_sequence()
    ref = eng.runner.full_forward(tokens, tags, P.layout(tags))[-1]
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=0)
    assert any(t.block > 0 for t in tags)  # the branches are in the cache, not re-encoded


def test_reprefill_join_reencodes_the_joined_text(eng):
    @program
    def reprefill(s):
        s += "list:\n"
        with s.parallel(["a", "b"], join="reprefill") as br:
            br[0] += "one" + gen("x", max_tokens=5, ignore_eos=True)
            br[1] += "two" + gen("y", max_tokens=5, ignore_eos=True)
        s += "\nend" + gen("after", max_tokens=6, ignore_eos=True)

    ex = EngineExecutor(eng, DEFAULTS)
    res = ex.run(reprefill)
    assert all(t.block == 0 for t in ex.last_sequence.written_sequence()[1])
    native = Runner("native", DEFAULTS, engine=eng).run(reprefill, {})
    assert (native.text, native.variables) == (res.text, res.variables)
    # After the causal re-encode, the tail is what a plain serial program over the same text writes
    # (the tiny tokenizer is character-level, so the same text is the same tokens).
    head = res.text[:res.text.rindex("\nend") + len("\nend")]

    @program
    def serial_text(s):
        s += head + gen("after", max_tokens=6, ignore_eos=True)

    assert EngineExecutor(eng, DEFAULTS).run(serial_text).variables["after"] == res.variables["after"]


def test_handwritten_sglang_program_batches_siblings_on_native_backend(eng):
    """A stock SGLang program (no hints): forked gens meet in one batch, joins splice the KV."""
    be = NativeBackend(eng, DEFAULTS)

    raw = text_then_fork(3, 6, pick=True)
    state = raw.run(topic="tea", backend=be)
    assert state.error() is None, state.error()
    assert be.stats["batches"] == 1 and be.stats["batched_calls"] == 3
    parts = state.text().split(" part ")[1:]
    for i, p in enumerate(parts):
        solo = eng.new_sequence(f"about tea: part {i}:")
        want = eng.generate(solo, SamplingParams(max_new_tokens=6, ignore_eos=True, repetition_penalty=1.1), "ar")
        assert p.startswith(f"{i}:{want.text}")
    assert state["pick"] in ("red", "blue")


@pytest.mark.filterwarnings("ignore:Error in stream_executor")  # SGLang warns, then reports it
def test_gather_variable_join_drops_the_branches(eng):
    be = NativeBackend(eng, DEFAULTS)

    @sgl.function
    def gather(s):
        s += "q:"
        forks = s.fork(2)
        forks += lambda i: f" {i}" + sgl.gen("v", max_tokens=3, temperature=0)
        forks.join()  # gather_variable: the parent's text does not include the branches
        s += " a" + sgl.gen("after", max_tokens=5, temperature=0, ignore_eos=True)

    state = gather.run(backend=be)
    assert state.error() is None, state.error()
    plain = eng.generate(eng.new_sequence("q: a"), SamplingParams(max_new_tokens=5, ignore_eos=True,
                                                                   repetition_penalty=1.1), "ar")
    assert state["after"] == plain.text and len(state["v"]) == 2

    @sgl.function
    def textless(s):  # a branch must bring text of its own: the engine decodes it from its tokens
        s += "q:"
        forks = s.fork(2)
        forks += sgl.gen("v", max_tokens=3, temperature=0)
        forks.join()
        s["child_error"] = str(forks[0].error())

    state = textless.run(backend=be)
    assert "must have text" in state["child_error"]


class _Scripted(sgl.lang.backend.base_backend.BaseBackend):
    """A backend without native ASPD whose 'model' writes one parallel block (for the client loop)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def generate(self, s, sampling_params):
        stop = sampling_params.stop
        self.calls.append(stop)
        if P.END_BRANCH in stop:
            title = s.text_.rsplit(P.BRANCH, 1)[1].split(":")[0]
            return f" all about {title}", {"completion_tokens": 3}
        if P.PARA in stop and P.END_PARA not in s.text_:
            return f"Intro.{P.TITLE}A{P.END_TITLE}{P.TITLE}B{P.END_TITLE}", {"completion_tokens": 8}
        return " Done.", {"completion_tokens": 2}


def test_adaptive_gen_client_loop_on_a_backend_without_aspd():
    @program
    def ask(s):
        s += "Q?" + gen("answer", max_tokens=64, adaptive=True)

    be = _Scripted()
    state = to_sglang(ask).run(backend=be)
    assert state.error() is None, state.error()
    assert state["answer"] == "Intro.\nA: all about A\nB: all about B\n Done."  # titled, a line per branch
    segs = state.get_meta_info("answer")["aspd"]["segments"]  # the structure, as aspd serve reports it
    assert [b["title"] for b in segs[1]["branches"]] == ["A", "B"]
    assert state.text().endswith(f"{P.BRANCH}A: all about A{P.END_BRANCH}{P.BRANCH}B: all about B{P.END_BRANCH}"
                                 f"{P.END_PARA} Done.")
    assert sum(P.END_BRANCH in c for c in be.calls) == 2


def test_adaptive_gen_runs_natively_on_native_backend(eng, monkeypatch):
    seen = []
    real = eng.generate
    monkeypatch.setattr(eng, "generate", lambda seq, p, mode="aspd": seen.append(mode) or real(seq, p, mode))

    @program
    def ask(s):
        s += "Q:" + gen("a", max_tokens=8) + " R:" + gen("b", max_tokens=8, adaptive=True)

    Runner("native", DEFAULTS, engine=eng).run(ask, {})
    assert seen == ["ar", "aspd"]


@pytest.mark.filterwarnings("ignore:Error in stream_executor")
def test_bad_input_gives_clear_errors(eng):
    with pytest.raises(ProgramError, match="missing \\['topic'\\]"):
        bind(fork_join.ir(), {})
    with pytest.raises(ProgramError, match="unknown \\['oops'\\]"):
        bind(fork_join.ir(), {"topic": "x", "oops": 1})

    @sgl.function
    def penalised(s):
        s += "n=" + sgl.gen("n", frequency_penalty=0.5, max_tokens=3)

    state = penalised.run(backend=NativeBackend(eng, DEFAULTS))
    assert isinstance(state.error(), BackendError) and "use repetition_penalty" in str(state.error())
    with pytest.raises(ProgramError, match="must define `main`"):
        load_program_file(Path(__file__))


@pytest.mark.filterwarnings("ignore:Error in stream_executor")
def test_a_failing_branch_is_reported_and_frees_everything(eng):
    """A branch over the context window fails: its siblings do not wait for it forever, the error
    reaches the caller naming the gen, and no sequence or branch stays behind in the backend."""
    from aspd_lang.interpreter_guard import ProgramRunError

    @program
    def too_long(s, doc):
        s += "docs:\n"
        with s.parallel(["a", "b"]) as br:
            br[0] += "short" + gen("x", max_tokens=3)
            br[1] += doc + gen("y", max_tokens=3)

    be_runner = Runner("native", DEFAULTS, engine=eng)
    with pytest.raises(ProgramRunError, match="program 'too_long', gen\\('y'\\) failed: .*context window.* "
                                              "\\(at test_dsl_run.py:[0-9]+\\)$"):
        be_runner.run(too_long, {"doc": "w" * 5000})
    be = be_runner._sglang_backend()
    assert be.roots == {} and be.children == {}
    ok = be_runner.run(too_long, {"doc": "fine"})  # the backend still serves
    assert ok.variables["y"] is not None


def test_python_api_run_and_run_batch(eng):
    one = fork_join.run(topic="tea", backend="engine", engine=eng, sampling=DEFAULTS)
    ref = Runner("engine", DEFAULTS, engine=eng).run(fork_join, {"topic": "tea"})
    assert (one.text, one.variables) == (ref.text, ref.variables) and one["x"] == ref.variables["x"]
    assert one.seconds > 0 and one.completion_tokens > 0
    batch = fork_join.run_batch([{"topic": "tea"}, {"topic": "rain"}], backend="native", engine=eng, sampling=DEFAULTS)
    assert len(batch) == 2 and batch[0].text == one.text and batch[1].variables["topic"] == "rain"
    assert batch.completion_tokens == sum(r.completion_tokens for r in batch)


def test_a_check_error_comes_before_torch_and_sglang_are_imported():
    code = textwrap.dedent("""
        import sys
        from aspd_lang import ProgramError, gen, program

        @program
        def bad(s, names):
            with s.parallel(names) as bs:
                for b in bs:
                    b += b.title + gen("x")

        try:
            bad.run(names=["a", "b"], backend="engine")
        except ProgramError as e:
            print(e)
        print(sorted(m for m in ("torch", "transformers", "sglang") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         cwd=Path(__file__).parents[1]).stdout.splitlines()
    assert "variable 'x' is defined in branches 'a' and 'b'" in out[0] and out[-1] == "[]"


def test_the_default_system_prompt_is_reported_and_shown_on_every_backend(eng):
    pf = load_program_file(PROGRAMS[0].parent / "tips.py")
    results = {name: r.run(pf.main, pf.args, serial=ser) for name, (r, ser) in _runs(eng).items()}
    system = results["engine"].default_system
    assert {r.default_system for r in results.values()} == {system}
    assert display_pieces(pf.main.ir(**pf.args), results["engine"])[0].text == ("user" if system is None else
                                                                               "system (the chat template's default)")
    # the tiny model's template has none; one that has is shown before the first turn, never silently
    shown = display_pieces(pf.main.ir(**pf.args), results["engine"].model_copy(update={"default_system": "Be kind."}))
    assert [(p.kind, p.text) for p in shown[:3]] == [("role", "system (the chat template's default)"),
                                                     ("text", "Be kind."), ("role", "user")]


def test_json_per_branch_program_gives_objects_that_validate(eng):
    pf = load_program_file(PROGRAMS[0].parent / "drink_facts.py")
    res = Runner("engine", DEFAULTS, engine=eng).run(pf.main, pf.args)
    facts = [res.variables[f"fact{i}"] for i in range(len(pf.args["drinks"]))]
    for text in facts:  # each validates against the program's Fact schema
        obj = json.loads(text)
        assert set(obj) == {"name", "origin", "caffeine"} and isinstance(obj["caffeine"], bool), text
        assert all(isinstance(obj[k], str) and len(obj[k]) <= 16 for k in ("name", "origin")), text
