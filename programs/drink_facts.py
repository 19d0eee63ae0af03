"""Structured output per branch, then a join over all of them: each branch fills one JSON object
against a schema (a pydantic model, enforced as a token mask), and the serial text after the join
sees every branch's object (a KV join: nothing is prefilled again).

    aspd run programs/drink_facts.py --arg drinks='["tea", "coffee", "cocoa", "mate"]'

Each `fact<i>` variable is JSON text that validates against `Fact` (`Fact.model_validate_json`).
"""

from pydantic import BaseModel, Field

from aspd_lang import gen, program

ARGS = {"drinks": ["tea", "coffee", "cocoa"]}


class Fact(BaseModel):
    name: str = Field(max_length=16)
    origin: str = Field(max_length=16)
    caffeine: bool


@program
def main(s, drinks):
    with s.user():
        s += ("For each drink, give its name, where it first came from and whether it has caffeine, as JSON: "
              + ", ".join(drinks) + ". Then say which one to drink in the evening.")
    with s.assistant():
        with s.parallel(drinks) as branches:
            for i, b in enumerate(branches):
                b += f"{b.title}: " + gen(f"fact{i}", json_schema=Fact, max_tokens=96) + "\n"
        s += "In the evening, drink" + gen("evening", max_tokens=24, stop="\n")
