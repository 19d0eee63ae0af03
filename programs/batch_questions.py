"""A batch run: one short program over every question of a JSONL file (FastChat's question format).

`aspd run` runs `main` once per row of `batch(file)` (in-process, programs run one after another;
SGLang's `run_batch` sends them concurrently to a server). Each answer is a chat turn.

    aspd run programs/batch_questions.py --arg file=programs/data/questions.jsonl
"""

import json
from pathlib import Path

from aspd_lang import gen, program

ARGS = {"file": str(Path(__file__).parent / "data" / "questions.jsonl")}


def batch(file: str) -> list[dict[str, str]]:
    """The argument sets to run `main` with (the module-level hook `aspd run` looks for)."""
    rows = [json.loads(line) for line in Path(file).read_text().splitlines() if line.strip()]
    return [{"question": r["turns"][0] if "turns" in r else r["question"]} for r in rows]


@program
def main(s, question):
    with s.user():
        s += question
    with s.assistant():
        s += gen("answer", max_tokens=64, stop="\n\n")
