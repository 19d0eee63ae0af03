"""Run a program file on one of the three backends, and turn its result into display pieces.

    engine  - the IR executed directly on the in-process engine (no SGLang)
    native  - compiled to an sgl.function, run by SGLang's interpreter on NativeBackend (in-process)
    sglang  - compiled, run by SGLang's interpreter against an SGLang-compatible server (URL)

Program files are read by `program_file.py` (no torch or SGLang: `aspd run` checks them first).
"""

from __future__ import annotations

import time
from typing import Any

from pydantic import BaseModel, ConfigDict

from runtime.protocol import ParallelBlock, Response
from runtime.sampling import SamplingParams

from . import ir
from .dsl import Program
from .events import OnEvent
from .executor import Backend, EngineExecutor, GenEvent, RunResult, bind
from .program_file import ProgramFile, load_program_file  # noqa: F401 - re-exported


class Runner:
    """Holds what a backend needs across runs (the engine, a NativeBackend, an endpoint)."""

    def __init__(self, backend: Backend, defaults: SamplingParams, engine=None, url: str | None = None):
        self.backend, self.defaults, self.engine, self.url = backend, defaults, engine, url
        self._sgl_backend = None

    def _sglang_backend(self):
        if self._sgl_backend is None:
            if self.backend == "native":
                from .native_backend import NativeBackend

                self._sgl_backend = NativeBackend(self.engine, self.defaults)
            else:
                from .http_backend import AspdEndpoint

                self._sgl_backend = AspdEndpoint(self.url, seed=self.defaults.seed, fork_bias=self.defaults.fork_bias)
        return self._sgl_backend

    def run(self, program: Program, args: dict[str, Any], serial: bool = False,
            on_event: OnEvent | None = None) -> RunResult:
        """One run; `on_event` hears its progress (events.py: what each backend reports)."""
        if self.backend == "engine":
            return EngineExecutor(self.engine, self.defaults, serial=serial, on_event=on_event).run(program, **args)
        from .interpreter_guard import ProgramRunError, failure
        from .sglang_compile import to_sglang

        prog = program.ir(**args)
        args = bind(prog, args)
        fn = to_sglang(prog, serial=serial, on_event=on_event)
        t0 = time.perf_counter()
        try:
            state = fn.run(backend=self._sglang_backend(), **args)
            text = state.text()
            if state.error() is not None:
                raise failure(state.stream_executor)
        except ProgramRunError as e:  # the program and the source line of the node that failed
            raise ProgramRunError(f"program {prog.name!r}, {e}{_where(prog, e.var)}") from e.__cause__
        seconds = time.perf_counter() - t0
        gens = []
        for name in ir.names(prog.body):
            meta = state.get_meta_info(name) or {}
            segs = (meta.get("aspd") or {}).get("segments")  # SGLang's meta_info: an ASPD answer's structure
            gens.append(GenEvent(name=name, value=str(state[name]), tokens=int(meta.get("completion_tokens") or 0),
                                 response=Response.model_validate({"segments": segs}) if segs else None))
        first_role = next((n.role for n in prog.body if isinstance(n, ir.Role)), None)
        system = self._sglang_backend().chat_template.default_system_prompt  # as SGLang's interpreter writes it
        return RunResult(program=prog.name, backend=self.backend, serial=serial, text=text,
                         variables={**args, **{g.name: g.value for g in gens}}, gens=gens,
                         completion_tokens=sum(g.tokens for g in gens), seconds=seconds,
                         default_system=system if first_role not in (None, "system") and system else None)


def _where(prog: ir.Program, var: str | None) -> str:
    """' (at file:line)' of the gen or select that defines `var`, if the program has one."""
    nodes = list(prog.body)
    while nodes:
        n = nodes.pop(0)
        if isinstance(n, ir.Gen | ir.Select) and n.name == var:
            return f" (at {n.loc})"
        if isinstance(n, ir.Role):
            nodes += n.body
        elif isinstance(n, ir.Parallel):
            nodes += [x for b in n.branches for x in b.body]
    return ""


# --------------------------------------------------------------------------- display pieces


class Piece(BaseModel):
    """What `aspd run` shows: a role heading, serial text, or a parallel block (titles, texts)."""

    model_config = ConfigDict(frozen=True)
    kind: str  # "role" | "text" | "parallel"
    text: str = ""
    titles: tuple[str, ...] = ()
    branches: tuple[str, ...] = ()


def display_pieces(prog: ir.Program, result: RunResult) -> list[Piece]:
    """The program's structure filled with the run's values (the same for every backend)."""
    v = result.variables
    adaptive = {g.name: g.response for g in result.gens if g.response is not None}
    out: list[Piece] = []

    def render(parts) -> str:
        return "".join(p if isinstance(p, str) else str(v.get(p.var, "")) for p in parts)

    def flat(nodes) -> str:
        return "".join(render(n.parts) if isinstance(n, ir.Text) else str(v.get(n.name, "")) if
                       isinstance(n, ir.Gen | ir.Select) else flat(n.body) if isinstance(n, ir.Role) else ""
                       for n in nodes)

    if result.default_system:  # not in the program, but in the text: shown, never silent
        out += [Piece(kind="role", text="system (the chat template's default)"),
                Piece(kind="text", text=result.default_system)]

    def walk(nodes) -> None:
        for n in nodes:
            if isinstance(n, ir.Role):
                out.append(Piece(kind="role", text=n.role))
                walk(n.body)
            elif isinstance(n, ir.Parallel):
                out.append(Piece(kind="parallel", titles=tuple(b.title for b in n.branches),
                                 branches=tuple(flat(b.body) for b in n.branches)))
            elif isinstance(n, ir.Gen) and n.name in adaptive:
                for seg in adaptive[n.name].segments:
                    if isinstance(seg, ParallelBlock):
                        out.append(Piece(kind="parallel", titles=seg.titles,
                                         branches=tuple(b.text for b in seg.branches)))
                    else:
                        add_text(seg.text)
            else:
                add_text(flat([n]))

    def add_text(text: str) -> None:  # adjacent text and values read as one paragraph
        if out and out[-1].kind == "text":
            out[-1] = Piece(kind="text", text=out[-1].text + text)
        else:
            out.append(Piece(kind="text", text=text))

    walk(prog.body)
    return out
