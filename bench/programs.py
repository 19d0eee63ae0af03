"""DSL benchmark: a 4-branch program (64 tokens per branch) with parallel blocks vs. --serial.

    .venv/bin/python bench/programs.py          # writes bench/results/programs.json

Both runs execute the same compiled program through SGLang's interpreter on NativeBackend; the
serial run decodes the parallel block one branch after another on the same engine. Runs are
interleaved (parallel, serial, parallel, ...) so machine drift hits both alike; best of N is kept
(this shared machine only ever adds time) with every run recorded. The in-process executor
(`--backend engine`) is measured the same way for reference.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from aspd_lang import gen, program  # noqa: E402
from aspd_lang.runner import Runner  # noqa: E402
from bench import common  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "programs.json"
TITLES = ["Exercise", "Sleep", "Diet", "Stress"]
BRANCH_TOKENS = 64
console = Console()


@program
def four_tips(s, topic):
    with s.user():
        s += f"Give four tips about {topic}."
    with s.assistant():
        s += "Here are four tips:\n"
        with s.parallel(TITLES) as br:
            for i, b in enumerate(br):
                b += f"{i + 1}. **{b.title}**:" + gen(f"tip{i}", max_tokens=BRANCH_TOKENS, ignore_eos=True) + "\n"
        s += "In short," + gen("summary", max_tokens=16, ignore_eos=True)


def measure(runner: Runner, repeats: int) -> dict:
    par, ser, same = [], [], []
    for _ in range(repeats):
        p = runner.run(four_tips, {"topic": "staying healthy"})
        s = runner.run(four_tips, {"topic": "staying healthy"}, serial=True)
        assert p.completion_tokens == s.completion_tokens == len(TITLES) * BRANCH_TOKENS + 16, (p, s)
        par.append(p.seconds)
        ser.append(s.seconds)
        same.append(p.text == s.text)
    return {"parallel_s": round(min(par), 3), "serial_s": round(min(ser), 3), "speedup": round(min(ser) / min(par), 2),
            "parallel_runs_s": [round(x, 3) for x in par], "serial_runs_s": [round(x, 3) for x in ser],
            "completion_tokens": len(TITLES) * BRANCH_TOKENS + 16, "same_text_runs": same}


def main() -> None:
    ap = common.parser(OUT, repeats=5)
    args = ap.parse_args()
    eng = common.engine(args)
    defaults = SamplingParams()
    native, engine = Runner("native", defaults, engine=eng), Runner("engine", defaults, engine=eng)
    native.run(four_tips, {"topic": "warm up"})  # first-call allocations are not the program's
    res = {"model": args.model, "dtype": args.dtype, "program": "four_tips: 4 branches x 64 tokens + 16-token summary",
           **measure(native, args.repeats), "engine_backend": measure(engine, args.repeats),
           "settings": {"repeats": args.repeats, **defaults.anti_loop, "greedy": True, "ignore_eos": True,
                        "backend": "native (SGLang interpreter on NativeBackend)"},
           **common.environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    t = Table(title=f"program benchmark ({args.dtype}): {res['program']}")
    for c in ("backend", "parallel blocks", "--serial", "speedup"):
        t.add_column(c, justify="right" if c != "backend" else "left")
    t.add_row("native (SGLang interpreter)", f"{res['parallel_s']:.2f} s", f"{res['serial_s']:.2f} s",
              f"{res['speedup']:.2f}x")
    e = res["engine_backend"]
    t.add_row("engine (IR executor)", f"{e['parallel_s']:.2f} s", f"{e['serial_s']:.2f} s", f"{e['speedup']:.2f}x")
    console.print(t)
    console.print(f"wrote {args.out} ({time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
