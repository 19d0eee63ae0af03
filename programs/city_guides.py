"""Data-driven structure: one parallel branch per city of a list argument, then a `select` among them.

A run traces the program with its argument values, so `s.parallel(cities)` gets one branch per
city and `select("best", cities)` one choice per city: the same structure on every backend. Give
the list as JSON on the command line.

    aspd run programs/city_guides.py --arg cities='["Lisbon", "Kyoto", "Quito", "Oslo"]'
"""

from aspd_lang import gen, program, select

ARGS = {"cities": ["Lisbon", "Kyoto", "Quito"]}


@program
def main(s, cities):
    with s.user():
        s += f"For each of {', '.join(cities)}, say what a first-time visitor should see, then pick one."
    with s.assistant():
        with s.parallel(cities) as branches:
            for i, b in enumerate(branches):
                b += f"{b.title}: " + gen(f"sight{i}", max_tokens=40, stop="\n") + "\n"
        s += "The best first trip is " + select("best", cities) + ", because"
        s += gen("reason", max_tokens=32, stop="\n")
