"""Explicit fork on the engine API: a serial intro, N branches decoded together, a serial conclusion.

    .venv/bin/python programs/explicit_fork.py "Give tips for learning a language." Listening Speaking Reading
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runtime.engine import Engine  # noqa: E402
from runtime.model_loader import load  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402


def main(question: str, titles: list[str]) -> None:
    eng = Engine(load())
    params = SamplingParams(max_new_tokens=64 * len(titles), max_branch_tokens=64, repetition_penalty=1.2,
                            stop=("\n\n",))
    seq = eng.new_sequence(eng.chat_prompt(question))
    eng.extend(seq, f"Here are {len(titles)} of them:\n\n")
    fork = eng.fork(seq, [f"{'' if i == 0 else chr(10) * 2}{i + 1}. **{t}**:" for i, t in enumerate(titles)], params)
    eng.extend(seq, "\n\nIn conclusion,")
    outro = eng.generate(seq, SamplingParams(max_new_tokens=48, repetition_penalty=1.2, stop=("\n\n",)), "ar")
    print(eng.text(seq).split("assistant\n", 1)[-1])
    print(f"\n[{fork.parallel_tokens} branch tokens in {fork.forward_passes} forward passes, "
          f"{fork.total_s:.2f} s; conclusion {outro.completion_tokens} tokens]")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "Give tips for staying healthy.",
         sys.argv[2:] or ["Exercise", "Sleep", "Diet"])
