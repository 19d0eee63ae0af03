"""The aspd_lang surface: `@program`, `s += ...`, `gen`, `select`, roles and `s.parallel(...)`.

A program is an ordinary Python function of a state `s` and its arguments. Calling `.ir()` traces
it once with symbolic arguments into the checked IR (`ir.py`): text with variable references,
gen/select nodes, roles and parallel blocks; `.ir(**args)` (what a run does) traces it with the
argument values, so data can shape it. Nothing runs until an executor takes the IR.

    @program
    def tips(s, topic):
        with s.user():
            s += f"Give three tips about {topic}."
        with s.assistant():
            with s.parallel(["Exercise", "Sleep", "Diet"]) as branches:
                for i, b in enumerate(branches):
                    b += f"{i + 1}. {b.title}:" + gen(f"tip{i}", max_tokens=48, stop="\\n")
            s += "\\nIn short," + gen("summary", max_tokens=32)
"""

from __future__ import annotations

import functools
import inspect
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pydantic import ValidationError

from . import ir

_MARK = "\x00"
_SYM = re.compile(f"{_MARK}([^{_MARK}]+){_MARK}")


def _loc(depth: int = 2) -> ir.Loc:
    f = sys._getframe(depth)
    return ir.Loc(file=f.f_code.co_filename.rsplit("/", 1)[-1], line=f.f_lineno)


class Sym:
    """A symbolic value (an argument or a variable): formats as a marker that text turns into a VarRef."""

    def __init__(self, name: str):
        self.name = name

    def __str__(self) -> str:
        return f"{_MARK}{self.name}{_MARK}"

    __format__ = lambda self, spec: str(self)  # noqa: E731 - f"{x}" and str(x) agree

    def __add__(self, other):
        return Expr([self]) + other

    def __radd__(self, other):
        return Expr([other, self])


class Expr:
    """A sequence of pieces to append: strings, symbols and gen/select calls."""

    def __init__(self, items: list):
        self.items = items

    def __add__(self, other):
        return Expr(self.items + (other.items if isinstance(other, Expr) else [other]))

    def __radd__(self, other):
        return Expr([other] + self.items)


class _Call(Expr):
    def __init__(self, cls: type, loc: ir.Loc, unknown: dict, **fields):
        super().__init__([self])
        self.cls, self.loc, self.unknown, self.fields = cls, loc, unknown, fields
        self.problem: str | None = None  # an argument the IR's types cannot name well


def gen(name: str, *, max_tokens: int = 128, stop: str | Sequence[str] = (), temperature: float = 0.0,
        top_p: float = 1.0, top_k: int = 0, ignore_eos: bool = False, adaptive: bool = False,
        fork_bias: float | None = None, regex: str | None = None, json_schema: Any = None,
        choices: Sequence[str] | None = None, **unknown) -> Expr:
    """Generate into variable `name` (greedy unless `temperature` is set; `sgl.gen` samples at 1.0).
    `adaptive=True` lets the model fork by itself (ASPD), `fork_bias` moves its fork threshold
    (a logit offset for opening a block: +2 forks more often, -2 less; default: the adapter's
    calibrated value); `regex`, `json_schema` (JSON text, a dict or a pydantic model class) or
    `choices` (the output is one of them, decoded under a grammar; `select` instead scores each
    choice whole) constrain the output."""
    loc = _loc()
    problem = None
    if isinstance(stop, str):
        stop = (stop,)
    elif isinstance(stop, Sequence) and all(isinstance(x, str) for x in stop):
        stop = tuple(stop)
    else:
        problem, stop = f"stop must be a string or a list of strings, got {stop!r}", ()
    if choices is not None:  # a grammar of the alternatives: the one regex the backends already take
        if isinstance(choices, str) or not choices or not all(isinstance(c, str) and c for c in choices):
            problem = f"choices must be a list of non-empty strings, got {choices!r}"
        elif regex is not None or json_schema is not None:
            problem = "give one of regex, json_schema and choices"
        else:
            regex = "(" + "|".join(re.escape(c) for c in choices) + ")"
    call = _Call(ir.Gen, loc, unknown, name=name, max_tokens=max_tokens, stop=stop, temperature=temperature,
                 top_p=top_p, top_k=top_k, ignore_eos=ignore_eos, adaptive=adaptive, fork_bias=fork_bias, regex=regex,
                 json_schema=_schema_text(json_schema))
    call.problem = problem
    return call


def _schema_text(schema: Any) -> str | None:
    """A JSON schema as JSON text: from text, a dict, or a pydantic model class."""
    if schema is None or isinstance(schema, str):
        return schema
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):
        schema = schema.model_json_schema()
    return json.dumps(schema)


def select(name: str, choices: Sequence[str], **unknown) -> Expr:
    """Pick one of `choices` by the model's log-likelihood, into variable `name`."""
    call = _Call(ir.Select, _loc(), unknown, name=name, choices=() if isinstance(choices, str) else tuple(choices))
    if isinstance(choices, str):
        call.problem = f"choices must be a list of strings, got the string {choices!r}"
    return call


class State:
    """What a program's `s` is while tracing: it records nodes."""

    def __init__(self, prog: Program, title: str | None = None):
        self._prog = prog
        self._nodes: list = []
        self.title = title
        self._open_block: ir.Loc | None = None  # set while `with s.parallel(...)` is open

    def __iadd__(self, other) -> State:
        loc, text = _loc(), ""
        self._closed_for(loc, "`s += ...`")
        for item in (other.items if isinstance(other, Expr) else [other]):
            if isinstance(item, str | Sym):  # adjacent text and variables make one text node
                text += str(item)
                continue
            if text:
                self._nodes.append(ir.Text(parts=_parts(text), loc=loc))
                text = ""
            self._nodes.append(self._prog._node(item, loc))
        if text:
            self._nodes.append(ir.Text(parts=_parts(text), loc=loc))
        return self

    def __getitem__(self, name: str) -> Sym:
        return Sym(name)

    def _closed_for(self, loc: ir.Loc, what: str) -> None:
        if self._open_block is not None:  # it would land before the block's branches: say so, never move it
            raise ir.ProgramError(f"program {self._prog.name!r}, at {loc}: {what} on the parent inside the "
                                  f"parallel block opened at {self._open_block}: write to a branch (b += ...) "
                                  "or after the `with` block")

    @contextmanager
    def _role(self, role: str) -> Iterator[None]:
        loc, outer = _loc(3), self._nodes
        self._closed_for(loc, f"s.{role}()")
        self._nodes = []
        try:
            yield
        finally:
            body, self._nodes = self._nodes, outer
            self._nodes.append(ir.Role(role=role, body=tuple(body), loc=loc))

    def system(self):
        return self._role("system")

    def user(self):
        return self._role("user")

    def assistant(self):
        return self._role("assistant")

    @contextmanager
    def parallel(self, titles: Sequence[str], join: str = "kv") -> Iterator[list[State]]:
        """One state per title, decoded in parallel over the shared prefix and joined in order."""
        loc = _loc(3)
        self._closed_for(loc, "s.parallel(...)")
        branches = [State(self._prog, str(t)) for t in titles]
        self._open_block = loc
        try:
            yield branches
        finally:
            self._open_block = None
        try:
            node = ir.Parallel(branches=tuple(ir.Branch(title=b.title, body=tuple(b._nodes)) for b in branches),
                               join=join, loc=loc)
        except ValidationError as e:
            raise self._prog._error(f"parallel block at {loc}", e) from None
        self._nodes.append(node)


class DataArgument(ir.ProgramError):
    """A program whose structure depends on an argument's value, traced without values."""


class Program:
    """A traced aspd_lang program; `.ir()` gives the checked IR."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__
        self.params = tuple(inspect.signature(fn).parameters)[1:]
        self._traced: dict[str, ir.Program] = {}  # by the JSON of the arguments traced with
        functools.update_wrapper(self, fn)

    def ir(self, **args: Any) -> ir.Program:
        """The checked IR. Without arguments the program is traced once with symbolic ones (text
        refers to them by name); with arguments it is traced with their values, so a list can be a
        block's titles (`s.parallel(cities)`), a `select`'s choices or a loop's range. Runs trace
        with the call's values, so the same program has the same structure on every backend."""
        if not args:
            return self._symbolic
        key = json.dumps(args, sort_keys=True, default=str)
        if key not in self._traced:
            if len(self._traced) >= 64:  # a batch over many argument sets: keep the recent ones
                self._traced.pop(next(iter(self._traced)))
            self._traced[key] = self._trace(args)
        return self._traced[key]

    def run(self, backend: str = "native", engine=None, url: str | None = None, sampling=None,
            serial: bool = False, **args: Any):
        """Run once: `tips.run(topic="tea", backend="engine")` -> a `RunResult` (`.text`, `.variables`,
        `result["tip0"]`, `.seconds`, tokens). See `api.run_batch` for the options."""
        from .api import run_batch

        return run_batch(self, [args], backend, engine=engine, url=url, sampling=sampling, serial=serial).runs[0]

    def run_batch(self, arg_sets: Sequence[dict[str, Any]], backend: str = "native", engine=None,
                  url: str | None = None, sampling=None, serial: bool = False):
        """Run once per argument set -> a `BatchResult` (`.runs`, totals)."""
        from .api import run_batch

        return run_batch(self, arg_sets, backend, engine=engine, url=url, sampling=sampling, serial=serial)

    def stream(self, backend: str = "native", engine=None, url: str | None = None, sampling=None,
               serial: bool = False, **args: Any):
        """Run once, yielding its events as they happen (`events.py`): text, branch progress, values,
        then `finished` with the `RunResult`. An error of the run is raised by the iterator."""
        from .api import run_batch
        from .events import iterate

        self._check_call(args)  # raises here, before the run's thread starts
        return iterate(lambda on_event: run_batch(self, [args], backend, engine=engine, url=url, sampling=sampling,
                                                  serial=serial, on_event=on_event).runs[0])

    async def arun(self, backend: str = "native", engine=None, url: str | None = None, sampling=None,
                   serial: bool = False, **args: Any):
        """`run` for asyncio: decodes on a worker thread, the event loop stays free."""
        import asyncio

        return await asyncio.to_thread(self.run, backend, engine, url, sampling, serial, **args)

    def astream(self, backend: str = "native", engine=None, url: str | None = None, sampling=None,
                serial: bool = False, **args: Any):
        """`stream` as an async iterator: `async for ev in tips.astream(topic="tea"): ...`."""
        from .api import run_batch
        from .events import aiterate

        self._check_call(args)
        return aiterate(lambda on_event: run_batch(self, [args], backend, engine=engine, url=url, sampling=sampling,
                                                   serial=serial, on_event=on_event).runs[0])

    def _check_call(self, args: dict[str, Any]) -> None:
        """The checks of a call with these arguments (missing or unknown ones, the traced program)."""
        if args or not self.params:
            self.ir(**args)
        else:
            self._trace(args)  # names the missing arguments

    @functools.cached_property
    def _symbolic(self) -> ir.Program:
        return self._trace({p: Sym(p) for p in self.params})

    def _trace(self, values: dict[str, Any]) -> ir.Program:
        missing, unknown = [p for p in self.params if p not in values], sorted(set(values) - set(self.params))
        if missing or unknown:
            raise ir.ProgramError(f"program {self.name!r} takes ({', '.join(self.params)}): "
                                  + ", ".join(filter(None, [missing and f"missing {missing}",
                                                            unknown and f"unknown {unknown}"])))
        s = State(self)
        symbolic = any(isinstance(v, Sym) for v in values.values())
        try:
            self.fn(s, **values)
        except (TypeError, AttributeError, ValueError, IndexError, KeyError) as e:
            if not symbolic or isinstance(e, ir.ProgramError):
                raise
            raise DataArgument(
                f"program {self.name!r} uses an argument as data ({e}): give its value, "
                f"{self.name}.ir({self.params[0]}=...), or run it (a run traces with the call's values)") from None
        return ir.check(ir.Program(name=self.name, params=self.params, body=tuple(s._nodes)))

    def _error(self, where: str, e: ValidationError) -> ir.ProgramError:
        first = e.errors()[0]
        return ir.ProgramError(f"program {self.name!r}, {where}: {'.'.join(map(str, first['loc']))}: {first['msg']}")

    def _node(self, item, loc: ir.Loc):
        if isinstance(item, _Call):
            where = f"{item.cls.__name__.lower()}({item.fields['name']!r}) at {item.loc}"
            if item.unknown:
                raise ir.ProgramError(f"program {self.name!r}, {where}: unknown argument(s) {sorted(item.unknown)}")
            if item.problem:
                raise ir.ProgramError(f"program {self.name!r}, {where}: {item.problem}")
            try:
                return item.cls(loc=item.loc, **item.fields)
            except ValidationError as e:
                raise self._error(where, e) from None
        raise ir.ProgramError(f"program {self.name!r}, at {loc}: cannot append {type(item).__name__}")


def _parts(text: str) -> tuple[str | ir.VarRef, ...]:
    pieces = _SYM.split(text)  # text, var, text, var, ...
    return tuple(ir.VarRef(var=p) if i % 2 else p for i, p in enumerate(pieces) if p or i % 2)


def program(fn: Callable) -> Program:
    """Decorator: make `fn(s, *args)` an aspd_lang program."""
    return Program(fn)
