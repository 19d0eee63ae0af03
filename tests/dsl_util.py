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
