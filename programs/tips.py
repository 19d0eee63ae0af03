"""Explicit parallel titles: one tip per title, decoded as parallel branches, then a serial summary.

The simplest fork/join program: the user knows the structure (three titles), so the block is
written in the program and every branch decodes over the same prefix KV at once.

    aspd run programs/tips.py --arg topic="learning a language"
"""

from aspd_lang import gen, program

ARGS = {"topic": "staying healthy"}
TITLES = ["Exercise", "Sleep", "Diet"]


@program
def main(s, topic):
    with s.user():
        s += f"Give three short tips about {topic}."
    with s.assistant():
        s += f"Here are three tips about {topic}:\n"
        with s.parallel(TITLES) as branches:
            for i, b in enumerate(branches):
                b += f"{i + 1}. **{b.title}**:" + gen(f"tip{i}", max_tokens=48, stop="\n")
                b += "\n"
        s += "In short," + gen("summary", max_tokens=32, stop="\n")
