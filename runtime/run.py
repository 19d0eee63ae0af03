"""One decoding call on a sequence, as a step generator: a `Run` of one `RunKind`.

`steps()` yields one `Forward` per step and is sent its logits; it returns the `GenerationOutput`.
A run is also the handle a stream reads while it decodes (`partial_text`) and what an abort turns
into an output (`output`). The engine's public entry points choose the kind:

    ADAPTIVE / AR   generate: serial decoding; ADAPTIVE lets the model open blocks (<|para|>), which
                    decode in parallel and join with <|/para|>, then serial decoding goes on
    FORK            fork(markup=True): branches on the caller's titles, in ASPD markup; ends at the join
    PLAIN_FORK      fork(): branches on plain-text seeds (any base model); ends at the join
    BRANCHES        decode_branches: some branches of an open plain block, each with its own
                    sampling; ends when they stop, the block stays open

Each constrained stream (runtime/grammar.py: a generate's serial stream, each branch) has its own
`Matcher`; a constrained generate never opens a block (the grammar covers the plain answer).
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING

import torch

from . import header_draft
from .anti_loop import link, title_bans
from .constraint import Allowed, Constraint, Phase, answer_start, opens_line
from .grammar import Matcher, matcher
from .outputs import BlockStats, FinishReason, GenerationOutput, LogProb, token_logprob
from .protocol import Branch, ParallelBlock, Response, SerialSegment, Tag, branch_seed
from .run_kind import RunKind, Steps
from .sampling import SamplingParams
from .sequence import CLOSE_BLOCK, SeqState, Stream
from .stops import apply_stop, cut_to_sentences, stop_ids, stop_strings
from .titles import Titles
from .token_sampler import Sampler

if TYPE_CHECKING:
    from .engine import Engine
    from .fork_gate import ForkGate

class Run:
    """The state of one generate, fork or decode_branches call.

    `params` is the run's sampling; BRANCHES has none (each branch brings its own, see `branches`)
    and `budget` caps its tokens instead.
    """

    def __init__(self, eng: Engine, seq: SeqState, kind: RunKind, params: SamplingParams | None,
                 budget: int | None = None, logprobs: int | None = None, linked: bool | None = None):
        self.eng, self.seq, self.kind, self.params = eng, seq, kind, params
        # a block's branches are parts of one answer: each may not repeat its siblings' n-grams and they
        # are sampled in turn (`link`); a program's fork keeps its branches apart
        self.linked = kind.serial if linked is None else linked
        self.ids = eng.ids
        self.gate: ForkGate | None = None  # set by _constraint: this answer's offset comes from the gate
        self.constraint = self._constraint()
        self.sampler = Sampler(params, eng.runner.device) if params is not None else None
        self.left = params.max_new_tokens if params is not None else budget
        self.prompt_tokens = seq.length
        self.forwards0 = eng.runner.forwards
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.finish = FinishReason.LENGTH
        self.stop_token: int | None = None
        self.done = kind.serial and self.left <= 0  # generate with no tokens to write: no step at all
        self.segments: list = []
        self.blocks: list[BlockStats] = []
        self.serial_count = self.parallel_count = 0
        self.serial_start = 0  # start of the current serial segment in seq.serial.generated
        self.titles = Titles()
        self.block_steps = 0
        self.dropped: dict[Tag, int] = {}  # branch tokens a budget cut took back (cut_to_sentences)
        self.stops = stop_strings(params) if params is not None else ()
        self.stop_ids = stop_ids(params, self.ids.eos) if params is not None else set()
        self.logprobs: list[LogProb] | None = [] if logprobs is not None else None
        self.top_k = logprobs or 0
        self.only: list[int] | None = None  # BRANCHES: the branches this output reports
        self.grammars: dict[Stream, Matcher] = {}  # the constrained streams' matchers
        if kind.serial:
            self._constrain(seq.serial, params, self.stop_ids)
        seq.serial.generated = []
        seq.serial.history = eng.new_history()  # the anti-loop rule sees what this call writes, as in SGLang

    def _constraint(self) -> Constraint:
        if not self.kind.serial:  # a fork's branches: titled ones decode under the constraint's branch rules
            phase = Phase.BRANCH if self.kind is RunKind.FORK else Phase.SERIAL
            return Constraint(self.ids, adaptive=False, phase=phase)
        p = self.params
        bias = self.eng.loaded.fork_bias if p.fork_bias is None else p.fork_bias
        adaptive = self.kind is RunKind.ADAPTIVE and p.grammar is None  # a grammar covers the plain answer
        tokens = self.eng.tokens(self.seq) if adaptive else []
        # A chat answer (right after the template's assistant header) with no offset of its own takes
        # the gate's, set from its first logits before its first token (which may open a block);
        # text that does not start an answer (a gen mid-answer, a raw prompt) keeps the calibrated one.
        starts = adaptive and answer_start(tokens, self.ids)
        if starts and p.fork_bias is None:
            self.gate = self.eng.loaded.gate
        return Constraint(self.ids, adaptive=adaptive, max_title_tokens=p.max_title_tokens,
                          max_branches=p.max_branches, fork_bias=bias,
                          line_start=adaptive and opens_line(tokens, self.ids),
                          opening_cap=0.0 if starts and p.intro_first else None)

    @classmethod
    def branches(cls, eng: Engine, seq: SeqState, requests: dict[int, SamplingParams]) -> Run:
        """BRANCHES: the given branches of the open plain block, each with its own sampling and stop
        rules (seeded branches give the same text whether they decode alone or together); the run's
        budget is the sum of theirs."""
        run = cls(eng, seq, RunKind.BRANCHES, None, budget=sum(p.max_new_tokens for p in requests.values()))
        for j, p in requests.items():
            seq.open_branches[j].restart(eng.new_history(), Sampler(p, eng.runner.device), stop_strings(p),
                                         stop_ids(p, eng.ids.eos), p.max_new_tokens)
            run._constrain(seq.open_branches[j], p, stop_ids(p, eng.ids.eos))
        run.only = list(requests)
        return run

    def _constrain(self, s: Stream, p: SamplingParams, ends: set[int]) -> None:
        """`s` decodes under `p`'s grammar, if any; `ends`: the tokens that end it."""
        if (g := matcher(p, self.eng.tok, ends, self.eng.runner.vocab_size)) is not None:
            self.grammars[s] = g

    # ----------------------------------------------------------------- main loop

    def steps(self) -> Steps[GenerationOutput]:
        """Decode to the end, one forward per step; returns the output."""
        seq = self.seq
        while not self.done:
            if seq.open_branches:
                yield from self._branch_step()
            else:
                yield from self._serial_step()
            if not self.done and self.left <= 0:
                self.finish, self.done = FinishReason.LENGTH, True
                if seq.open_branches and self.kind.joins:
                    # each branch the budget cut keeps its complete sentences; the dropped tokens still count
                    self.dropped = cut_to_sentences(seq, self.eng.decode)
                    seq.close("generation stopped inside a parallel block (max_new_tokens)")
        return self.output()

    def _sampled(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0

    def _serial_step(self) -> Steps[None]:
        drafted = self._draft()
        if not drafted:
            logits = yield from self.eng.serial_logits_steps(self.seq)
            self._serial_token(logits)
            return
        # The draft rides along with the token just sampled; each drafted token stays only if its
        # row samples it, under the state the tokens before it left (`header_draft`).
        s = self.seq.serial
        first = len(s.pending) - 1
        s.push(drafted)
        rows = (yield from self.eng.feed_steps(self.seq, [s], rows_from=first))[s]
        for r, d in enumerate(drafted):
            tok, allowed = self._choose(rows[r])
            if tok != d:
                self.seq.unfeed(len(drafted) - r)
                self._write_serial(rows[r], tok, allowed)
                return
            self._write_serial(rows[r], tok, allowed, fed=True)
            if self.done or self.seq.open_branches:  # a kept token opened a block: the rest is not serial text
                self.seq.unfeed(len(drafted) - r - 1)
                return
        self._serial_token(rows[len(drafted)])

    def _draft(self) -> list[int]:
        """Tokens to feed with the next serial step beyond the pending ones, to be verified there."""
        s = self.seq.serial
        if (not self.eng.drafts or self.kind is not RunKind.ADAPTIVE or self.stops or s in self.grammars
                or not s.pending):
            return []
        drafted = self._propose()
        if any(t in self.stop_ids for t in drafted):  # a kept draft token never ends the run
            return []
        room = min(self.left - 1, self.eng.max_len - self.seq.length - 1)  # the token after the draft too
        return drafted[:max(room, 0)]

    def _propose(self) -> list[int]:
        c = self.constraint
        if c.phase not in (Phase.TITLE, Phase.TITLES_CLOSED):
            return []
        return header_draft.draft(c.phase, c.title_tokens, [self.eng.decode(t) for t in self.titles.closed(c.phase)],
                                  [self.eng.decode(t) for t in self.titles.earlier], self.eng.encode, self.ids)

    def _serial_token(self, logits: torch.Tensor) -> None:
        self._write_serial(logits, *self._choose(logits))

    def _choose(self, logits: torch.Tensor) -> tuple[int, Allowed]:
        """The next serial token from its logits under the run's rules, and those rules."""
        s = self.seq.serial
        if self.gate is not None:
            self.constraint.fork_bias, self.gate = self.gate.fork_bias(logits), None
        allowed = self.constraint.allowed(tokens_left=self.left)
        if self.constraint.phase is Phase.TITLE and allowed.only is None:  # no title repeats one of this answer
            ban = title_bans(self.titles.all(), self.eng.words, self.ids.end_title)
            if ban:
                allowed = dataclasses.replace(allowed, banned=allowed.banned | ban)
        return self.sampler(logits[None], [s.history], [allowed], [self.grammars.get(s)])[0], allowed

    def _write_serial(self, logits: torch.Tensor, tok: int, allowed: Allowed, fed: bool = False) -> None:
        """Write the chosen serial token; `fed`: it is already in the cache (a kept draft token)."""
        s = self.seq.serial
        g = self.grammars.get(s)
        self._sampled()
        if tok in self.stop_ids:
            self.finish, self.done, self.stop_token = FinishReason.STOP, True, tok
            return
        if self.logprobs is not None:
            self.logprobs.append(token_logprob(torch.log_softmax(logits, -1), tok, self.top_k))
        self.left -= 1
        self.serial_count += 1
        s.generated.append(tok)
        if allowed.anti_loop and tok not in self.ids.markup:
            s.history.add(tok)
        self.titles.track(tok, self.constraint.phase, len(s.generated) - 1, self.ids)
        self.constraint.advance(tok)
        if not fed:
            s.push([tok])
        complete = g is not None and g.advance(tok)
        if tok == self.ids.para:
            self._flush_serial(self.titles.header_start)
            self.open_block([self.eng.decode(t) for t in self.titles.current])
        elif self.stops and tok not in self.ids.markup and self._apply_stop(s, self.stops, self.serial_start):
            self.finish, self.done = FinishReason.STOP, True
        elif complete:
            self.finish, self.done = FinishReason.STOP, True

    def branch_progress(self) -> list[tuple[str, int]]:
        """Each open branch's title and tokens so far (empty outside a block)."""
        return [(b.title, len(b.generated)) for b in self.seq.open_branches]

    def partial_text(self) -> str:
        """The answer's text so far without an unfinished parallel block or header: it only grows
        (what a stream sends). Stop strings are not cut yet."""
        done = Response(segments=tuple(self.segments)).answer_text()
        if self.seq.open_branches:
            return done
        end = self.titles.header_start if self.constraint.phase in (Phase.TITLE, Phase.TITLES_CLOSED) else None
        toks = [t for t in self.seq.serial.generated[self.serial_start:end] if t not in self.ids.markup]
        return done + self.eng.decode(toks)

    def _apply_stop(self, s: Stream, stops: tuple[str, ...], start: int = 0) -> bool:
        """Cut `s` right before a stop string in what it generated since `start` (`stops.apply_stop`)."""
        drop = apply_stop(self.seq, s, stops, self.eng.decode, self.eng.encode, start)
        if drop is None:
            return False
        if self.logprobs is not None and s is self.seq.serial:
            del self.logprobs[max(len(self.logprobs) - drop, 0):]
        return True

    # ----------------------------------------------------------------- blocks

    def open_block(self, titles: list[str], seeds: list[list[int]] | None = None) -> None:
        """One branch per title, seeded with the protocol's branch opening (or the given plain seeds)."""
        seq = self.seq
        block = seq.new_block()
        branches = []
        for j, title in enumerate(titles, start=1):
            br = self.eng.new_stream(Tag(block, j), seq.serial.history.copy())
            br.title, br.max_tokens = title, self.params.max_branch_tokens
            br.push(seeds[j - 1] if seeds is not None else self.eng.encode(branch_seed(title)))
            branches.append(br)
            self._constrain(br, self.params, {self.ids.end_branch, *self.ids.eos} if self.kind.markup
                            else self.stop_ids)
        if self.linked:
            link([b.history for b in branches])
        seq.start_block(branches)
        self.block_steps = 0

    def _branch_step(self) -> Steps[None]:
        """One forward over the live branches; when all are closing, the join rides along."""
        seq = self.seq
        live = [b for b in seq.open_branches if b.finish is None or b.pending]
        joining = all(b.finish is not None for b in seq.open_branches)
        if joining and not self.kind.joins:
            self.finish, self.done = FinishReason.BRANCHES, True
            return
        for b in live:
            b.want_logits = b.finish is None
        plan: list = ([seq.serial] if seq.serial.pending else []) + live
        if joining:
            plan.append(CLOSE_BLOCK)
            if self.kind.serial:
                seq.serial.pending, seq.serial.want_logits = [self.ids.end_para], True
                plan.append(seq.serial)
        logits = yield from self.eng.feed_steps(seq, plan)
        self.block_steps += 1
        if joining:
            self._join()
            if self.kind.serial:
                self._serial_token(logits[seq.serial])
            else:
                if self.kind is RunKind.FORK:
                    seq.serial.push([self.ids.end_para])  # fed with whatever follows
                self.finish, self.done = FinishReason.JOIN, True
            return
        # the budget's last tokens go to the first branches: a step never writes past max_new_tokens
        rows = [b for b in live if b in logits][:self.left]
        if rows:
            # linked branches are sampled in turn, each seeing what those before it wrote this step;
            # independent ones in one call
            for part in ([b] for b in rows) if self.linked else [rows]:
                for b, tok in zip(part, self._sample_rows(part, logits)):
                    self._branch_token(b, tok)
            self._sampled()

    def _sample_rows(self, rows: list[Stream], logits: dict[Stream, torch.Tensor]) -> list[int]:
        """One token per branch: in one call where the branches share the run's sampler, else each its own."""
        allowed = [self._branch_allowed(b) for b in rows]
        gs = [self.grammars.get(b) for b in rows]
        if all(b.sampler is None for b in rows):
            return self.sampler(torch.stack([logits[b] for b in rows]), [b.history for b in rows], allowed, gs)
        return [b.sampler(logits[b][None], [b.history], [a], [g])[0] for b, a, g in zip(rows, allowed, gs)]

    def _branch_allowed(self, b: Stream) -> Allowed:
        if self.kind.markup:
            return self.constraint.allowed(len(b.generated), self.params.max_branch_tokens)
        return Allowed(banned=self.ids.markup)

    def _branch_token(self, b: Stream, tok: int) -> None:
        self.left -= 1
        self.parallel_count += 1
        if self.kind.markup:
            tok = self.constraint.map_sampled(tok)
            if tok == self.ids.end_branch:
                b.finish = FinishReason.STOP
                b.push([tok])  # written to the cache with the next step, then it leaves
                return
        elif tok in (self.stop_ids if b.stop_ids is None else b.stop_ids):
            b.finish = FinishReason.STOP  # EOS is not part of the text: nothing more to feed
            return
        b.generated.append(tok)
        b.history.add(tok)
        b.push([tok])
        if (g := self.grammars.get(b)) is not None and g.advance(tok):  # the grammar is complete
            b.finish = FinishReason.STOP
            b.push([self.ids.end_branch] if self.kind.markup else [])  # its last token is still fed
            return
        if self.kind.markup:
            return
        stops = self.stops if b.stops is None else b.stops
        if stops and self._apply_stop(b, stops):
            b.finish = FinishReason.STOP
        elif len(b.generated) >= b.max_tokens:
            b.finish = FinishReason.LENGTH  # its last token is still fed, with the next step

    def _join(self) -> None:
        seq = self.seq
        for b in seq.open_branches:
            seq.serial.history.merge(b.history)
            self.grammars.pop(b, None)
        self._record_block()
        seq.end_block()
        if self.kind.serial:
            self.constraint.join()
            seq.serial.generated.append(self.ids.end_para)
        self.serial_start = len(seq.serial.generated)

    def _record_block(self) -> None:
        brs = self.seq.open_branches
        if self.only is not None:
            brs = [brs[j] for j in self.only]
        branches = tuple(Branch(title=b.title, body=self.eng.decode(b.generated)) for b in brs)
        self.segments.append(ParallelBlock(branches=branches))
        # the tokens each branch generated (a budget cut's dropped tail too: it took steps)
        self.blocks.append(BlockStats(titles=[b.title for b in brs],
                                      branch_tokens=[len(b.generated) + self.dropped.get(b.tag, 0) for b in brs],
                                      steps=self.block_steps))

    def _flush_serial(self, end: int | None = None) -> None:
        s = self.seq.serial
        toks = [t for t in s.generated[self.serial_start:end] if t not in self.ids.markup]
        if toks:
            self.segments.append(SerialSegment(text=self.eng.decode(toks)))

    # ----------------------------------------------------------------- result

    def output(self) -> GenerationOutput:
        """What the run wrote so far (at its end: the call's output)."""
        if self.seq.open_branches:  # cut by max_new_tokens inside a block, or a plain block left open
            self._record_block()
        elif self.constraint.phase in (Phase.TITLE, Phase.TITLES_CLOSED):  # cut inside a block header
            self._flush_serial(self.titles.header_start)
        else:
            self._flush_serial()
        resp = Response(segments=tuple(self.segments))
        total = time.perf_counter() - self.t0
        return GenerationOutput(
            text=self.kind.text(resp), markup=resp.markup(), response=resp, finish_reason=self.finish,
            stop_token=self.stop_token, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.serial_count + self.parallel_count,
            serial_tokens=self.serial_count, parallel_tokens=self.parallel_count,
            forward_passes=self.eng.runner.forwards - self.forwards0, blocks=self.blocks,
            ttft_s=self.ttft if self.ttft is not None else total, total_s=total, token_logprobs=self.logprobs)
