"""The checked IR of aspd_lang programs: pydantic nodes, printable and serialisable to JSON.

Pure Python (no torch, no SGLang): programs are traced to these nodes (see `dsl.py`), checked by
`check()` before any token is generated, then run by an executor or compiled to SGLang.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runtime.errors import UserError


class ProgramError(UserError, ValueError):
    """A malformed program, found before anything runs."""


class Loc(BaseModel):
    model_config = ConfigDict(frozen=True)
    file: str = "?"
    line: int = 0

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class VarRef(BaseModel):
    """A reference to a program argument or a generated variable, inside text."""

    model_config = ConfigDict(frozen=True)
    var: str


class _Node(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    loc: Loc = Loc()


class Text(_Node):
    kind: Literal["text"] = "text"
    parts: tuple[str | VarRef, ...]

    def label(self) -> str:
        text = "".join(p if isinstance(p, str) else "{" + p.var + "}" for p in self.parts)
        return f"text({text[:40]!r})"


class Gen(_Node):
    kind: Literal["gen"] = "gen"
    name: str
    max_tokens: int = Field(128, ge=1)
    stop: tuple[str, ...] = ()
    temperature: float = Field(0.0, ge=0.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0)
    ignore_eos: bool = False
    adaptive: bool = False  # the model may open parallel blocks itself (ASPD)
    # an adaptive gen's logit offset for opening a block (+ forks more); None: the adapter's calibrated one
    fork_bias: float | None = Field(None, ge=-100.0, le=100.0)
    # constrained output (SGLang's names; at most one): a regex, or a JSON schema as JSON text
    regex: str | None = None
    json_schema: str | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not x for x in v):
            raise ValueError("a stop string is empty (it would match at once): drop it")
        return v

    def label(self) -> str:
        return f"gen({self.name!r})"

    def describe(self) -> str:
        """The gen with its token cap and temperature (greedy by default, unlike `sgl.gen`) and
        every other parameter it sets."""
        given = {k: v for k, v in self if k not in ("kind", "name", "loc")
                 and (k in ("max_tokens", "temperature") or v != type(self).model_fields[k].default)}
        return f"gen({', '.join([repr(self.name), *(f'{k}={v!r}' for k, v in given.items())])})"


class Select(_Node):
    kind: Literal["select"] = "select"
    name: str
    choices: tuple[str, ...]

    def label(self) -> str:
        return f"select({self.name!r})"

    def describe(self) -> str:
        return f"select({self.name!r}, choices={list(self.choices)!r})"


class Role(_Node):
    kind: Literal["role"] = "role"
    role: Literal["system", "user", "assistant"]
    body: tuple[Node, ...] = ()

    def label(self) -> str:
        return f"{self.role}()"


class Branch(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    title: str
    body: tuple[Node, ...] = ()


class Parallel(_Node):
    """A fork/join block: one branch per title over the shared prefix, joined in order."""

    kind: Literal["parallel"] = "parallel"
    branches: tuple[Branch, ...]
    join: Literal["kv", "reprefill"] = "kv"

    def label(self) -> str:
        return f"parallel({len(self.branches)} branches)"


Node = Annotated[Text | Gen | Select | Role | Parallel, Field(discriminator="kind")]
Role.model_rebuild()
Branch.model_rebuild()
Parallel.model_rebuild()


class Program(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str
    params: tuple[str, ...] = ()
    body: tuple[Node, ...]

    def pretty(self) -> str:
        lines = [f"program {self.name}({', '.join(self.params)})"]

        def walk(nodes, depth):
            for n in nodes:
                lines.append("  " * depth + f"{n.describe() if isinstance(n, Gen | Select) else n.label()}  @{n.loc}")
                if isinstance(n, Role):
                    walk(n.body, depth + 1)
                elif isinstance(n, Parallel):
                    for b in n.branches:
                        lines.append("  " * (depth + 1) + f"branch {b.title!r}")
                        walk(b.body, depth + 2)

        walk(self.body, 1)
        return "\n".join(lines)


def names(nodes, branches: bool = True) -> list[str]:
    """The variables that nodes define, in order (inside parallel blocks too, unless `branches=False`)."""
    out = []
    for n in nodes:
        if isinstance(n, Gen | Select):
            out.append(n.name)
        elif isinstance(n, Role):
            out += names(n.body, branches)
        elif isinstance(n, Parallel) and branches:
            for b in n.branches:
                out += names(b.body)
    return out


def check(program: Program) -> Program:
    """Raise ProgramError naming the program, the node and its source line for a malformed program."""
    defined = set(program.params)

    def fail(node, msg: str):
        raise ProgramError(f"program {program.name!r}, {node.label()} at {node.loc}: {msg}")

    def walk(nodes, in_parallel: bool, defined: set[str], in_role: bool = False,
             siblings: dict[str, str] | None = None) -> set[str]:
        made: set[str] = set()
        for n in nodes:
            if isinstance(n, Text):
                for p in n.parts:
                    if isinstance(p, VarRef) and p.var not in defined and p.var in (siblings or {}):
                        fail(n, f"reads variable {p.var!r} of sibling branch {siblings[p.var]!r}: branches run in "
                                "parallel and cannot see each other; read it after the block")
                    if isinstance(p, VarRef) and p.var not in defined:
                        fail(n, f"reads variable {p.var!r} before it exists")
            elif isinstance(n, Gen | Select):
                if isinstance(n, Select) and len(n.choices) < 2:
                    fail(n, f"select needs at least 2 choices, got {len(n.choices)} (a fixed string is text: s += ...)")
                if isinstance(n, Gen) and n.fork_bias is not None and not n.adaptive:
                    fail(n, "fork_bias applies to an adaptive gen (the model decides where to fork): "
                            "add adaptive=True or drop fork_bias")
                if isinstance(n, Gen) and n.regex is not None and n.json_schema is not None:
                    fail(n, "give at most one of regex and json_schema")
                if n.name in defined:
                    fail(n, f"variable {n.name!r} is already defined")
                if isinstance(n, Gen) and n.adaptive and in_parallel:
                    fail(n, "an adaptive gen cannot run inside a parallel block (blocks do not nest)")
                defined.add(n.name)
                made.add(n.name)
            elif isinstance(n, Role):
                if in_role:
                    fail(n, "roles cannot be nested")
                made |= walk(n.body, in_parallel, defined, True, siblings)
            elif isinstance(n, Parallel):
                if in_parallel:
                    fail(n, "parallel blocks cannot be nested")
                if len(n.branches) < 2:
                    fail(n, f"a parallel block needs at least 2 branches, got {len(n.branches)}")
                titles = [b.title for b in n.branches]
                if dup := next((t for t in titles if titles.count(t) > 1), None):
                    fail(n, f"branch title {dup!r} appears {titles.count(dup)} times: titles name the branches, "
                            "make them distinct")
                owner = {name: b.title for b in n.branches for name in names(b.body)}
                seen: dict[str, str] = {}
                for b in n.branches:
                    if not b.body or not isinstance(b.body[0], Text):
                        fail(n, f"branch {b.title!r} must start with text (what the branch is about)")
                    others = {k: t for k, t in owner.items() if t != b.title}
                    for name in walk(b.body, True, set(defined), in_role, others):
                        if name in seen:
                            fail(n, f"variable {name!r} is defined in branches {seen[name]!r} and {b.title!r}")
                        seen[name] = b.title
                defined |= set(seen)
                made |= set(seen)
        return made

    walk(program.body, False, defined)
    return program
