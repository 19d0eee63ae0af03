"""The DSL programs the in-process conformance suite and the HTTP tests both run."""

from __future__ import annotations

from pathlib import Path

from aspd_lang import gen, program, select
from runtime.sampling import SamplingParams

PROGRAMS = sorted(Path(__file__).parents[1].joinpath("programs").glob("*.py"))
DEFAULTS = SamplingParams(repetition_penalty=1.1)


@program
def fork_join(s, topic):
    s += f"notes on {topic}:\n"
    with s.parallel(["a", "b", "c"]) as br:
        br[0] += "first," + gen("x", max_tokens=6, ignore_eos=True)
        br[1] += "second thing," + gen("y", max_tokens=9, ignore_eos=True) + " and" + gen("y2", max_tokens=4)
        br[2] += "3:" + select("z", ["yes", "no"]) + gen("w", max_tokens=5, ignore_eos=True)
    s += "\nso" + gen("after", max_tokens=5, ignore_eos=True)


def check_stream_events(events, ref, backend: str) -> None:
    """What every backend reports: each variable's value once (a branch's with its title), each
    branch's end, and a last `finished` whose result equals a plain run's."""
    *body, last = events
    assert last.kind == "finished" and (last.result.text, last.result.variables) == (ref.text, ref.variables)
    values = {e.var: e for e in body if e.kind == "value"}
    assert {k: e.value for k, e in values.items()} == {k: v for k, v in ref.variables.items() if k != "topic"}
    assert [(values[v].branch, values[v].title) for v in ("x", "y", "z", "after")] == \
        [(0, "a"), (1, "b"), (2, "c"), (None, None)]
    ends = [e for e in body if e.kind == "branch" and e.done]
    assert sorted((e.branch, e.title) for e in ends) == [(0, "a"), (1, "b"), (2, "c")]
    if backend == "engine":  # token by token: the deltas of each serial gen add up to its value
        assert "".join(e.text for e in body if e.kind == "text" and e.var == "after") == ref.variables["after"]
        progress = [e.tokens for e in body if e.kind == "branch" and e.branch == 1 and not e.done]
        assert len(progress) >= 5 and progress == sorted(progress)  # one per step, growing
        assert ends[[e.branch for e in ends].index(1)].tokens == 9 + 4


def text_then_fork(branches: int, part_tokens: int, pick: bool = False):
    """A hand-written SGLang program (no compiled hints) with only text before its fork: `branches`
    gens of `part_tokens` joined by KV, a serial tail, and optionally a select after it."""
    import sglang as sgl

    @sgl.function
    def raw(s, topic):
        s += f"about {topic}:"
        forks = s.fork(branches)
        for i, f in enumerate(forks):
            f += f" part {i}:" + sgl.gen("p", max_tokens=part_tokens, temperature=0, ignore_eos=True)
        forks.join("concate_and_append")
        s += " then" + sgl.gen("tail", max_tokens=4, temperature=0, ignore_eos=True)
        if pick:
            s += " pick " + sgl.select("pick", choices=["red", "blue"])

    return raw
