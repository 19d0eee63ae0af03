"""Skeleton-of-Thought: the model writes a short outline serially, then every point is expanded in parallel.

The outline is four `gen` calls that stop at a newline; each branch then reads its point from a
variable (`s["point1"]`) and expands it over the shared prefix (question + outline). A serial
conclusion after the join sees every expansion.

    aspd run programs/skeleton_of_thought.py --arg question="How can cities reduce traffic?"
"""

from aspd_lang import gen, program

ARGS = {"question": "How can I improve my time management skills?"}
POINTS = 4


@program
def main(s, question):
    with s.user():
        s += f"{question}\nFirst write a skeleton of {POINTS} short points, then expand each point."
    with s.assistant():
        s += "Skeleton:\n"
        for i in range(1, POINTS + 1):
            s += f"{i}." + gen(f"point{i}", max_tokens=16, stop="\n") + "\n"
        s += "\nExpanded:\n"
        with s.parallel([f"point {i}" for i in range(1, POINTS + 1)]) as branches:
            for i, b in enumerate(branches, start=1):
                b += f"{i}." + s[f"point{i}"] + "\n" + gen(f"detail{i}", max_tokens=56, stop="\n\n") + "\n\n"
        s += "In conclusion," + gen("conclusion", max_tokens=40, stop="\n")
