"""Compile a program's IR to SGLang frontend primitives: an `sgl.function` for any SGLang backend.

Text becomes `s += ...`, roles `with s.user():`, gen/select `sgl.gen`/`sgl.select`, and a parallel
block `s.fork(n)` + per-branch primitives + `join("concate_and_append")` (the KV join; with
`join="reprefill"` the branch texts are appended as plain text instead). Branch variables are
copied to the parent after the join, as in the in-process executor.

An adaptive gen runs natively on a backend that says `supports_aspd` (NativeBackend: the engine
switches serial/parallel itself). Elsewhere it becomes a client-side loop: generate until
`<|para|>`, read the titles, fork one branch per title seeded `<|branch|>T:`, generate each until
`<|/branch|>`, append them in order with `<|/para|>`, and continue.
"""

from __future__ import annotations

import functools
import inspect
import re
from typing import Any

import sglang as sgl
from sglang.global_config import global_config
from sglang.lang.ir import SglFunction, SglVariable

from runtime import protocol as P

from . import interpreter_guard, ir
from .dsl import Program
from .events import BranchProgress, OnEvent, ValueDone

_HEADER = re.compile(f"((?:{re.escape(P.TITLE)}.*?{re.escape(P.END_TITLE)})+)\\s*$", re.S)
_TITLE = re.compile(f"{re.escape(P.TITLE)}(.*?){re.escape(P.END_TITLE)}", re.S)


def to_sglang(program: Program | ir.Program, serial: bool = False, on_event: OnEvent | None = None) -> SglFunction:
    """The program as an `sgl.function`. `serial=True` runs parallel blocks one branch at a time;
    `on_event` hears each gen and select as it finishes and each branch as it ends (events.py)."""
    prog = program.ir() if isinstance(program, Program) else ir.check(program)
    interpreter_guard.install()

    def body(s, **kwargs):
        _Compiled(prog, serial, {k: str(v) for k, v in kwargs.items()}, on_event).walk(s, prog.body)

    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("s", *prog.params)]
    body.__signature__ = inspect.Signature(params)  # SGLang reads the argument names from it
    body.__name__ = prog.name
    return sgl.function(body)


def gen_kwargs(node: ir.Gen) -> dict[str, Any]:
    """A gen node as `sgl.gen` arguments (SGLang disables top-k with -1, we with 0)."""
    kw = dict(max_tokens=node.max_tokens, stop=list(node.stop), temperature=node.temperature, top_p=node.top_p,
              top_k=node.top_k or -1, ignore_eos=node.ignore_eos)
    return kw | {k: v for k, v in (("regex", node.regex), ("json_schema", node.json_schema)) if v is not None}


class _Hook:
    """Runs a callback on the stream executor's own thread, in order with its other commands:
    SGLang's interpreter reads an `SglVariable` by calling `get_var` on its source executor."""

    def __init__(self, callback):
        self.callback = callback

    def get_var(self, name: str) -> str:
        self.callback()
        return ""


def _on_executor(callback) -> SglVariable:
    expr = SglVariable("aspd_hook", None)
    expr.source_stream_executor = _Hook(callback)
    return expr


class _Compiled:
    def __init__(self, prog: ir.Program, serial: bool, args: dict[str, str], on_event: OnEvent | None = None):
        self.prog, self.serial, self.args, self.on_event = prog, serial, args, on_event

    def _report(self, s, name: str, where: tuple[int, str] | None) -> None:
        """Queue, on the executor, the event of `name`'s value (once its command has run)."""
        if self.on_event is None:
            return
        exe = s.stream_executor
        branch, title = where or (None, None)
        s += _on_executor(lambda: self.on_event(ValueDone(var=name, value=str(exe.variables.get(name, "")),
                                                          branch=branch, title=title)))

    def _render(self, s, parts) -> str:
        return "".join(p if isinstance(p, str) else (self.args[p.var] if p.var in self.args else str(s[p.var]))
                       for p in parts)

    def walk(self, s, nodes, where: tuple[int, str] | None = None) -> None:
        """Compile `nodes` onto state `s`; `where`: (index, title) of the branch they run in."""
        for n in nodes:
            if isinstance(n, ir.Text):
                text = self._render(s, n.parts)
                if text:
                    s += text
            elif isinstance(n, ir.Role):
                with getattr(s, n.role)():
                    self.walk(s, n.body, where)
            elif isinstance(n, ir.Gen):
                if not n.adaptive:
                    s += sgl.gen(n.name, **gen_kwargs(n))
                    self._report(s, n.name, where)
                elif getattr(s.stream_executor.backend, "supports_aspd", False):
                    s += _on_executor(functools.partial(s.stream_executor.backend.next_gen_adaptive,
                                                        s.stream_executor.sid, n.fork_bias))
                    s += sgl.gen(n.name, **gen_kwargs(n))
                    self._report(s, n.name, where)
                else:
                    self._adaptive_client(s, n)
                    self._report(s, n.name, where)
            elif isinstance(n, ir.Select):
                s += sgl.select(n.name, choices=list(n.choices), temperature=0.0)
                self._report(s, n.name, where)
            elif isinstance(n, ir.Parallel):
                self._parallel(s, n)

    def _parallel(self, s, n: ir.Parallel) -> None:
        s.sync()  # the interpreter commits the shared prefix at a fork only once its text is there
        forks = s.fork(len(n.branches))
        backend = s.stream_executor.backend
        hint = getattr(backend, "expect_branches", None)
        children = [f.stream_executor for f in forks.states]
        if hint and not self.serial:
            hint(s.stream_executor, children)
        done = getattr(backend, "branch_done", None)
        for j, (f, b) in enumerate(zip(forks.states, n.branches)):
            if hint and self.serial:
                hint(s.stream_executor, [f.stream_executor])
            self.walk(f, b.body, (j, b.title))
            if done:  # siblings still decoding stop waiting for this branch once its work has run
                f += _on_executor(functools.partial(done, f.stream_executor.sid))
            if self.on_event is not None:
                names = list(ir.names(b.body))
                f += _on_executor(functools.partial(self._branch_done, f.stream_executor, j, b.title, names))
            if self.serial:
                f.sync()
        for f in forks.states:
            f.sync()  # waits for the branch (or for its worker to stop)
        failed = [e for e in (interpreter_guard.failure(f.stream_executor) for f in forks.states) if e is not None]
        if failed:  # a failed branch never reaches the join: end the branches and report it
            for f in forks.states:
                f.stream_executor.end()
            raise failed[0]
        self._join(s, forks, n.join)
        for f, b in zip(forks.states, n.branches):  # branch variables (and their meta) join the parent
            for name in ir.names(b.body):
                s.set_var(name, f.get_var(name))
                s.stream_executor.meta_info[name] = f.get_meta_info(name)

    def _branch_done(self, exe, j: int, title: str, gens: list[str]) -> None:
        tokens = sum(int((exe.meta_info.get(g) or {}).get("completion_tokens") or 0) for g in gens)
        self.on_event(BranchProgress(var=gens[-1] if gens else "", branch=j, title=title, tokens=tokens, done=True))

    @staticmethod
    def _join(s, forks, how: str) -> None:
        if how == "kv":
            forks.join("concate_and_append")
            return
        text = ""
        for f in forks.states:
            exe = f.stream_executor
            exe.sync()
            text += exe.text_[exe.fork_start_text_pos:]
            exe.end()
        s += text  # re-encoded causally: a plain text append

    def _adaptive_client(self, s, n: ir.Gen) -> None:
        """ASPD over a backend without native support: the serial/parallel switching done here."""
        global_config.skip_special_tokens_in_output = False  # the loop reads the markup tokens
        kw = gen_kwargs(n)
        left, markup, part = n.max_tokens, "", 0
        while left > 0:
            name = f"{n.name}__serial{part}"
            s += sgl.gen(name, **{**kw, "max_tokens": left, "stop": [*n.stop, P.PARA]})
            text = s[name]
            left -= _tokens(s, name, text)
            header = _HEADER.search(text)
            if header is None or left <= 0:
                markup += text
                break
            titles = _TITLE.findall(header.group(1))
            s += P.PARA
            markup += text + P.PARA
            s.sync()
            forks = s.fork(len(titles))
            for i, (f, t) in enumerate(zip(forks.states, titles)):
                f += P.branch_seed(t) + sgl.gen(f"{n.name}__b{part}_{i}", **{**kw, "max_tokens": left,
                                                                           "stop": [P.END_BRANCH]})
                f += P.END_BRANCH
            forks.join("concate_and_append")
            for i, (f, t) in enumerate(zip(forks.states, titles)):
                body = f[f"{n.name}__b{part}_{i}"]
                left -= _tokens(f, f"{n.name}__b{part}_{i}", body)
                markup += P.branch_seed(t) + body + P.END_BRANCH
            s += P.END_PARA
            markup += P.END_PARA
            part += 1
        resp = _parsed(markup)
        s.set_var(n.name, resp.answer_text() if resp else markup)
        if resp is not None:  # the structure, as aspd serve and NativeBackend report it in meta_info
            s.stream_executor.meta_info[n.name] = {"completion_tokens": n.max_tokens - max(left, 0),
                                                   "aspd": {"segments": [x.model_dump() for x in resp.segments]}}


def _tokens(s, name: str, text: str) -> int:
    """Tokens a gen used, for the loop's budget: the backend's count, or ~4 characters a token
    where a backend reports none."""
    meta = s.get_meta_info(name) or {}
    return int(meta.get("completion_tokens") or max(1, len(text) // 4))


def _parsed(markup: str) -> P.Response | None:
    try:
        return P.parse(markup)
    except P.ProtocolError:
        return None  # a malformed block (e.g. cut by the token cap): the text is kept as written
