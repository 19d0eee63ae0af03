"""Pros and cons of two options: four independent branches, then a serial verdict picked by `select`.

Each pro/con list depends only on the question, so the four decode together. The verdict is a
`select` scored by log-likelihood over the joined text, followed by a short reason.

    aspd run programs/pros_cons.py --arg a="renting" --arg b="buying a home"
"""

from aspd_lang import gen, program, select

ARGS = {"a": "working from home", "b": "working in an office"}


@program
def main(s, a, b):
    with s.user():
        s += f"Compare option A, {a}, and option B, {b}: give pros and cons of each, then a verdict."
    with s.assistant():
        with s.parallel(["pros a", "cons a", "pros b", "cons b"]) as br:
            br[0] += f"Pros of {a}:\n" + gen("pros_a", max_tokens=48, stop="\n\n") + "\n\n"
            br[1] += f"Cons of {a}:\n" + gen("cons_a", max_tokens=48, stop="\n\n") + "\n\n"
            br[2] += f"Pros of {b}:\n" + gen("pros_b", max_tokens=48, stop="\n\n") + "\n\n"
            br[3] += f"Cons of {b}:\n" + gen("cons_b", max_tokens=48, stop="\n\n") + "\n\n"
        s += "Verdict: option " + select("verdict", ["A", "B"]) + " is better, because"
        s += gen("reason", max_tokens=32, stop="\n")
