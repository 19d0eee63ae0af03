"""The aspd_lang surface: `@program`, `s += ...`, `gen`, `select`, roles and `s.parallel(...)`.

A program is an ordinary Python function of a state `s` and its arguments. Calling `.ir()` traces
it once with symbolic arguments into the checked IR (`ir.py`): text with variable references,
gen/select nodes, roles and parallel blocks. Nothing runs until an executor takes the IR.

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
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

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


def gen(name: str, *, max_tokens: int = 128, stop: str | Sequence[str] = (), temperature: float = 0.0,
        top_p: float = 1.0, top_k: int = 0, ignore_eos: bool = False, adaptive: bool = False, **unknown) -> Expr:
    """Generate into variable `name`. `adaptive=True` lets the model fork by itself (ASPD)."""
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    return _Call(ir.Gen, _loc(), unknown, name=name, max_tokens=max_tokens, stop=stop, temperature=temperature,
                 top_p=top_p, top_k=top_k, ignore_eos=ignore_eos, adaptive=adaptive)


def select(name: str, choices: Sequence[str], **unknown) -> Expr:
    """Pick one of `choices` by the model's log-likelihood, into variable `name`."""
    return _Call(ir.Select, _loc(), unknown, name=name, choices=tuple(choices))


class State:
    """What a program's `s` is while tracing: it records nodes."""

    def __init__(self, prog: Program, title: str | None = None):
        self._prog = prog
        self._nodes: list = []
        self.title = title

    def __iadd__(self, other) -> State:
        loc, text = _loc(), ""
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

    @contextmanager
    def _role(self, role: str) -> Iterator[None]:
        loc, outer = _loc(3), self._nodes
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
        branches = [State(self._prog, str(t)) for t in titles]
        yield branches
        try:
            node = ir.Parallel(branches=tuple(ir.Branch(title=b.title, body=tuple(b._nodes)) for b in branches),
                               join=join, loc=loc)
        except ValidationError as e:
            raise self._prog._error(f"parallel block at {loc}", e) from None
        self._nodes.append(node)


class Program:
    """A traced aspd_lang program; `.ir()` gives the checked IR."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.name = fn.__name__
        self.params = tuple(inspect.signature(fn).parameters)[1:]
        functools.update_wrapper(self, fn)

    @functools.cached_property
    def _ir(self) -> ir.Program:
        s = State(self)
        self.fn(s, *(Sym(p) for p in self.params))
        return ir.check(ir.Program(name=self.name, params=self.params, body=tuple(s._nodes)))

    def ir(self) -> ir.Program:
        return self._ir

    def _error(self, where: str, e: ValidationError) -> ir.ProgramError:
        first = e.errors()[0]
        return ir.ProgramError(f"program {self.name!r}, {where}: {'.'.join(map(str, first['loc']))}: {first['msg']}")

    def _node(self, item, loc: ir.Loc):
        if isinstance(item, _Call):
            where = f"{item.cls.__name__.lower()}({item.fields['name']!r}) at {item.loc}"
            if item.unknown:
                raise ir.ProgramError(f"program {self.name!r}, {where}: unknown argument(s) {sorted(item.unknown)}")
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
