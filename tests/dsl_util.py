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
