"""Explicit fork on the engine API: a serial intro, one branch per title decoded together, a serial conclusion.

    .venv/bin/python programs/explicit_fork.py "Give tips for learning a language." Listening Speaking Reading

The program itself is `runtime.cli.demo_program` (what `aspd demo` runs): `Engine.extend` for
serial text, `Engine.fork` for the branches, `Engine.generate` for the conclusion.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.cli import demo_program  # noqa: E402
from runtime.engine import Engine  # noqa: E402
from runtime.model_loader import load  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402


def main(question: str, titles: list[str]) -> None:
    eng = Engine(load())
    run = demo_program(eng, question, titles, SamplingParams(repetition_penalty=1.2), branch_tokens=64, parallel=True)
    print(run.answer)
    print(f"\n[{run.tokens} tokens generated in {run.seconds:.2f} s, {len(titles)} branches decoded together]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Give tips for staying healthy.",
         sys.argv[2:] or ["Exercise", "Sleep", "Diet"])
