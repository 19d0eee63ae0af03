"""aspd_lang: the DSL for serial, fork/join and adaptive generation programs.

`dsl.py` traces programs into the checked IR of `ir.py`. Executors (on the engine in `runtime`, and
compilation to SGLang primitives) take the IR; they build on the engine's explicit fork API
(`runtime.engine.Engine.fork`) and adaptive generation (`Engine.generate(..., mode="aspd")`).
"""

from runtime import __version__

from .dsl import Program, gen, program, select
from .ir import ProgramError


def __getattr__(name: str):
    if name == "AspdEndpoint":  # imported on use: it pulls in SGLang's HTTP client
        from .http_backend import AspdEndpoint

        return AspdEndpoint
    if name == "ProgramRunError":  # a backend error that ended a program (imports SGLang)
        from .interpreter_guard import ProgramRunError

        return ProgramRunError
    raise AttributeError(name)
__all__ = ["AspdEndpoint", "Program", "ProgramError", "ProgramRunError", "__version__", "gen", "program", "select"]
