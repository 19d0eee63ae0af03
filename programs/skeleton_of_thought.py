"""Skeleton-of-Thought: the model writes a short outline serially, then every point is expanded in parallel.

The outline is one `gen` per point, each stopping at a newline; each branch then reads its point
from a variable (`s["point1"]`) and expands it over the shared prefix (question + outline). A serial
conclusion after the join sees every expansion. `make` builds the program for a token budget
(`aspd bench` fits it to --max-new-tokens); `main` is the default one.

    aspd run programs/skeleton_of_thought.py --arg question="How can cities reduce traffic?"
"""

from aspd_lang import gen, program

ARGS = {"question": "How can I improve my time management skills?"}
ANSWER_START = "Expanded:\n"  # what follows is the answer a user reads (the skeleton is scaffolding)


def make(points: int = 4, point_tokens: int = 16, detail_tokens: int = 56, conclusion_tokens: int = 40):
    @program
    def skeleton_of_thought(s, question):
        with s.user():
            s += f"{question}\nFirst write a skeleton of {points} short points, then expand each point."
        with s.assistant():
            s += "Skeleton:\n"
            for i in range(1, points + 1):
                s += f"{i}." + gen(f"point{i}", max_tokens=point_tokens, stop="\n") + "\n"
            s += "\n" + ANSWER_START
            with s.parallel([f"point {i}" for i in range(1, points + 1)]) as branches:
                for i, b in enumerate(branches, start=1):
                    b += f"{i}." + s[f"point{i}"] + "\n" + gen(f"detail{i}", max_tokens=detail_tokens,
                                                               stop="\n\n") + "\n\n"
            s += "In conclusion," + gen("conclusion", max_tokens=conclusion_tokens, stop="\n")

    return skeleton_of_thought


def for_budget(max_new_tokens: int, points: int = 4):
    """A program whose gens together stay within `max_new_tokens` (1/16 per outline point, 1/8 for
    the conclusion, the rest shared by the expansions)."""
    point, conclusion = max(4, max_new_tokens // 16), max(4, max_new_tokens // 8)
    detail = max(4, (max_new_tokens - points * point - conclusion) // points)
    return make(points, point, detail, conclusion)


main = make()
