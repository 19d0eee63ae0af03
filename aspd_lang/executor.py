"""Run a program's IR directly on the in-process engine (no SGLang involved).

Serial nodes extend one engine sequence. A parallel block opens a plain block on it: every
branch is a generator over its nodes that yields at each `gen`; the driver decodes all branches
waiting at a gen in one engine call (one forward per step for all of them), sends each its text
and moves on, phase by phase. The join keeps the branch KV (ASPD) or re-encodes the joined text
(`join="reprefill"`). With `serial=True` the same calls run one branch after another: the
baseline that shows what the parallel block buys.
"""

from __future__ import annotations

import time
from collections.abc import Generator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from runtime.engine import Engine, GenerationOutput
from runtime.protocol import Response
from runtime.roles import role_format
from runtime.sampling import SamplingParams
from runtime.sequence import SeqState

from . import ir
from .dsl import Program
from .events import BranchProgress, OnEvent, TextDelta, ValueDone

Backend = Literal["engine", "native", "sglang"]


class GenEvent(BaseModel):
    """One gen or select as it ran (what `aspd run` renders)."""

    model_config = ConfigDict(frozen=True)
    name: str
    value: str
    tokens: int = 0
    response: Response | None = None  # an adaptive gen's structure


class RunResult(BaseModel):
    """One program run on any backend: its full text, variables, tokens and wall time."""

    program: str
    backend: str
    serial: bool
    text: str
    variables: dict[str, Any]
    gens: list[GenEvent] = []
    completion_tokens: int
    forward_passes: int | None = None
    seconds: float
    # engine backend only: time to the first generated token, and the parallel structure decoded
    ttft_s: float | None = None
    critical_path_tokens: int | None = None  # serial tokens + each block's longest branch
    parallel_tokens: int | None = None
    blocks: int | None = None
    branches: int | None = None
    # the chat template's default system prompt, written before the first turn because the program
    # opened no `s.system()` (every backend does this, as the template itself would)
    default_system: str | None = None

    def __getitem__(self, name: str) -> Any:  # result["tip0"], as SGLang's program state reads
        return self.variables[name]


def bind(program: ir.Program, args: dict[str, Any]) -> dict[str, Any]:
    """Check call arguments against the program's parameters (a ProgramError names what is wrong)."""
    missing = [p for p in program.params if p not in args]
    unknown = sorted(set(args) - set(program.params))
    if missing or unknown:
        raise ir.ProgramError(f"program {program.name!r} takes ({', '.join(program.params)}): "
                              + ", ".join(filter(None, [missing and f"missing {missing}",
                                                        unknown and f"unknown {unknown}"])))
    return dict(args)  # text renders a value with str(); lists shaped the trace (`Program.ir(**args)`)


def gen_params(node: ir.Gen, defaults: SamplingParams) -> SamplingParams:
    """A gen node's sampling: its own fields over the run's defaults (repetition penalty, seed)."""
    p = defaults.model_copy(update=dict(max_new_tokens=node.max_tokens, temperature=node.temperature,
                                        top_p=node.top_p, top_k=node.top_k, stop=node.stop,
                                        ignore_eos=node.ignore_eos, max_branch_tokens=node.max_tokens,
                                        regex=node.regex, json_schema=node.json_schema,
                                        **({"fork_bias": node.fork_bias} if node.fork_bias is not None else {})))
    if node.regex is None and node.json_schema is None:
        return p
    try:  # a grammar is checked (compiled once) by validation, which model_copy skips
        return SamplingParams.model_validate(p.model_dump())
    except ValueError as e:
        raise ir.ProgramError(f"{node.label()} at {node.loc}: {' '.join(str(e).split())}") from None


def choose(choices: tuple[str, ...], logprobs: list[list[float]]) -> str:
    """SGLang's default rule: the highest mean log-probability per token."""
    means = [sum(lp) / len(lp) for lp in logprobs]
    return choices[means.index(max(means))]


class EngineExecutor:
    def __init__(self, engine: Engine, defaults: SamplingParams | None = None, serial: bool = False,
                 on_event: OnEvent | None = None):
        self.engine = engine
        self.defaults = defaults or SamplingParams()
        self.serial = serial
        self.on_event = on_event  # streaming (events.py): text token by token, branch progress, values
        self.roles = role_format(engine.tok)
        self.last_sequence: SeqState | None = None  # the last run's engine sequence, for inspection

    def run(self, program: Program | ir.Program, **args: Any) -> RunResult:
        prog = program.ir(**args) if isinstance(program, Program) else ir.check(program)
        run = _Run(self, prog, bind(prog, args))
        self.last_sequence = run.seq
        return run.result()


_GenRequest = ir.Gen  # what a node walk yields: "decode this gen here", answered with its text


class _Run:
    def __init__(self, ex: EngineExecutor, prog: ir.Program, args: dict[str, Any]):
        self.ex, self.eng, self.prog = ex, ex.engine, prog
        self.vars: dict[str, Any] = dict(args)
        self.seq: SeqState | None = None
        self.text = ""
        self.pending = ""  # serial text not yet handed to the engine (a sequence needs a prompt)
        self.messages = 0
        self.gens: list[GenEvent] = []
        self.tokens = self.critical = self.parallel = self.blocks = self.branches = 0
        self.ttft: float | None = None
        self.default_system: str | None = None
        self.emit = ex.on_event or (lambda ev: None)
        self.titles: dict[int, str] = {}  # the open block's branch titles, by engine branch index
        self.forwards0 = self.eng.runner.forwards
        self.t0 = time.perf_counter()
        self._drive_serial(prog.body)
        if self.pending:
            self._flush()

    def result(self) -> RunResult:
        return RunResult(program=self.prog.name, backend="engine", serial=self.ex.serial, text=self.text,
                         variables=self.vars, gens=self.gens, completion_tokens=self.tokens,
                         forward_passes=self.eng.runner.forwards - self.forwards0,
                         seconds=time.perf_counter() - self.t0, ttft_s=self.ttft, critical_path_tokens=self.critical,
                         parallel_tokens=self.parallel, blocks=self.blocks, branches=self.branches,
                         default_system=self.default_system)

    def _timed(self, out: GenerationOutput) -> None:
        """Note the first token's time (an output ends now; its first token came ttft_s after it began)."""
        if self.ttft is None and out.completion_tokens:
            self.ttft = time.perf_counter() - self.t0 - out.total_s + out.ttft_s

    # ----------------------------------------------------------------- writing text

    def _render(self, parts: tuple[str | ir.VarRef, ...]) -> str:
        return "".join(p if isinstance(p, str) else str(self.vars[p.var]) for p in parts)

    def _write(self, branch: int | None, text: str, texts: dict[int, str] | None = None) -> None:
        if not text:
            return
        if branch is None:
            self.pending += text
            self.text += text
        else:
            self.eng.branch_extend(self.seq, branch, text)
            texts[branch] += text

    def _flush(self) -> SeqState:
        """Hand pending serial text to the engine (the first text starts the sequence)."""
        if self.seq is None:
            if not self.pending:
                raise ir.ProgramError(f"program {self.prog.name!r} must write text before its first gen or block")
            self.seq = self.eng.new_sequence(self.pending)
        elif self.pending:
            self.eng.extend(self.seq, self.pending)
        self.pending = ""
        return self.seq

    # ----------------------------------------------------------------- walking nodes

    def _walk(self, nodes, branch: int | None = None,
              texts: dict[int, str] | None = None) -> Generator[_GenRequest, str, None]:
        """Write text and run selects in place; yield each gen and receive its text."""
        for n in nodes:
            if isinstance(n, ir.Text):
                self._write(branch, self._render(n.parts), texts)
            elif isinstance(n, ir.Role):
                if branch is None and self.messages == 0 and n.role != "system" and self.ex.roles.default_system:
                    self.default_system = self.ex.roles.default_system
                    self._write(None, self.ex.roles.prefix["system"] + self.ex.roles.default_system
                                + self.ex.roles.suffix["system"])
                self._write(branch, self.ex.roles.prefix[n.role], texts)
                yield from self._walk(n.body, branch, texts)
                self._write(branch, self.ex.roles.suffix[n.role], texts)
                self.messages += branch is None
            elif isinstance(n, ir.Gen):
                value = yield n
                self._set(n.name, value, branch, texts)
            elif isinstance(n, ir.Select):
                if branch is None:
                    self._flush()
                value = choose(n.choices, self.eng.score(self.seq, n.choices, branch))
                self.emit(ValueDone(var=n.name, value=value, branch=branch, title=self.titles.get(branch)))
                self.gens.append(GenEvent(name=n.name, value=value))
                self.vars[n.name] = value
                self._write(branch, value, texts)
            elif isinstance(n, ir.Parallel):
                self._parallel(n)

    def _set(self, name: str, value: str, branch: int | None, texts: dict[int, str] | None) -> None:
        """A gen's text is already in the engine's cache: record it without feeding it again."""
        self.vars[name] = value
        if branch is None:
            self.text += value
        else:
            texts[branch] += value

    def _drive_serial(self, nodes) -> None:
        walk = self._walk(nodes)
        try:
            node = next(walk)
            while True:
                node = walk.send(self._serial_gen(node))
        except StopIteration:
            pass

    def _serial_gen(self, node: ir.Gen) -> str:
        seq = self._flush()
        sent = ""

        def progress(run) -> None:  # the gen's new text; the model's own block: its branches' tokens
            nonlocal sent
            text = run.partial_text()
            if len(text) > len(sent):
                self.emit(TextDelta(var=node.name, text=text[len(sent):]))
                sent = text
            for j, (title, n) in enumerate(run.branch_progress()):
                self.emit(BranchProgress(var=node.name, branch=j, title=title, tokens=n))

        out = self.eng.generate(seq, gen_params(node, self.ex.defaults), mode="aspd" if node.adaptive else "ar",
                                on_step=progress if self.ex.on_event else None)
        if out.text.startswith(sent) and len(out.text) > len(sent):  # stop strings may cut the streamed tail
            self.emit(TextDelta(var=node.name, text=out.text[len(sent):]))
        self.emit(ValueDone(var=node.name, value=out.text))
        self._record(node, out.text, out, out.response if node.adaptive else None)
        return out.text

    def _record(self, node: ir.Gen, value: str, out: GenerationOutput, response: Response | None = None) -> None:
        self._timed(out)
        self.tokens += out.completion_tokens
        self.critical += out.critical_path_tokens
        self.parallel += out.parallel_tokens
        self.blocks += len(out.blocks)
        self.branches += sum(len(b.branch_tokens) for b in out.blocks)
        self.gens.append(GenEvent(name=node.name, value=value, tokens=out.completion_tokens, response=response))

    def _parallel(self, node: ir.Parallel) -> None:
        seq = self._flush()
        self.eng.open_block(seq)
        texts: dict[int, str] = {}
        walks = {}
        for b in node.branches:
            j = self.eng.add_branch(seq)
            texts[j], self.titles[j] = "", b.title
            walks[j] = self._walk(b.body, j, texts)
        waiting = {j: self._advance(w, None, first=True) for j, w in walks.items()}
        waiting = {j: g for j, g in waiting.items() if g is not None}
        branch_tokens = dict.fromkeys(walks, 0)
        for j in walks:
            if j not in waiting:  # a branch without a gen is done at once
                self.emit(BranchProgress(var="", branch=j, title=self.titles[j], tokens=0, done=True))
        while waiting:
            batch = dict([next(iter(waiting.items()))]) if self.ex.serial else waiting

            def progress(run, batch=batch) -> None:  # this call's tokens, after the branch's earlier gens'
                now = run.branch_progress()
                for j, g in batch.items():
                    self.emit(BranchProgress(var=g.name, branch=j, title=self.titles[j],
                                             tokens=branch_tokens[j] + now[j][1]))

            out = self.eng.decode_branches(seq, {j: gen_params(g, self.ex.defaults) for j, g in batch.items()},
                                           on_step=progress if self.ex.on_event else None)
            self._timed(out)
            self.tokens += out.completion_tokens
            block = out.response.blocks[0]
            for (j, g), br, n in zip(list(batch.items()), block.branches, out.blocks[0].branch_tokens):
                branch_tokens[j] += n
                self.emit(ValueDone(var=g.name, value=br.body, branch=j, title=self.titles[j]))
                self.gens.append(GenEvent(name=g.name, value=br.body, tokens=n))
                nxt = self._advance(walks[j], br.body)
                if nxt is None:
                    self.emit(BranchProgress(var=g.name, branch=j, title=self.titles[j], tokens=branch_tokens[j],
                                             done=True))
                    del waiting[j]
                else:
                    waiting[j] = nxt
        self.critical += max(branch_tokens.values(), default=0)
        self.parallel += sum(branch_tokens.values())
        self.blocks, self.branches = self.blocks + 1, self.branches + len(walks)
        self.eng.join(seq, reprefill=node.join == "reprefill")
        self.titles = {}
        self.text += "".join(texts[j] for j in walks)

    @staticmethod
    def _advance(walk, value: str | None, first: bool = False) -> ir.Gen | None:
        try:
            return next(walk) if first else walk.send(value)
        except StopIteration:
            return None
