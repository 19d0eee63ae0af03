"""The Python API: `program.run(**args, backend=...)` and `program.run_batch([...])`.

Every check (the program's trace with these arguments, the arguments themselves) runs before torch,
transformers or SGLang is imported, so a malformed program fails in a fraction of a second. The
in-process backends load the embedded model once per process unless given an `engine`.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from runtime.errors import UserError

from .events import OnEvent

if TYPE_CHECKING:
    from runtime.engine import Engine
    from runtime.sampling import SamplingParams

    from .dsl import Program
    from .executor import Backend, RunResult

DEFAULT_URL = "http://127.0.0.1:30000"  # `aspd serve`'s default address


@functools.cache
def default_engine() -> Engine:
    """The embedded model (the shipped adapter if present), loaded at the first in-process run."""
    from runtime.engine import Engine
    from runtime.model_loader import DEFAULT_MODEL, load

    return Engine(load(DEFAULT_MODEL, adapter="auto"))


class BatchResult(BaseModel):
    """The runs of a batch, in order, and their totals."""

    runs: list[Any]  # RunResult (imported lazily)
    completion_tokens: int
    seconds: float

    def __iter__(self) -> Iterator[RunResult]:  # type: ignore[override]
        return iter(self.runs)

    def __len__(self) -> int:
        return len(self.runs)

    def __getitem__(self, i: int) -> RunResult:
        return self.runs[i]


def run_batch(program: Program, arg_sets: Sequence[dict[str, Any]], backend: Backend = "native",
              engine: Engine | None = None, url: str | None = None, sampling: SamplingParams | None = None,
              serial: bool = False, on_event: OnEvent | None = None) -> BatchResult:
    """Run `program` once per argument set (one after another) on one backend; `on_event` hears
    every run's progress (events.py)."""
    if backend not in ("engine", "native", "sglang"):
        raise UserError(f"backend must be engine, native or sglang, got {backend!r}")
    for args in arg_sets:  # all checks first: a bad set fails before anything loads or runs
        program.ir(**args)
    from runtime.sampling import SamplingParams

    from .runner import Runner

    if backend != "sglang" and engine is None:
        engine = default_engine()
    runner = Runner(backend, sampling or SamplingParams(), engine=engine, url=url or DEFAULT_URL)
    runs = [runner.run(program, dict(args), serial=serial, on_event=on_event) for args in arg_sets]
    return BatchResult(runs=runs, completion_tokens=sum(r.completion_tokens for r in runs),
                       seconds=sum(r.seconds for r in runs))
