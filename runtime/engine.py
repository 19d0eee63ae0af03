"""The hybrid serial-parallel decoding engine.

One `Sequence` is one growing text with one flat KV cache. The engine decodes it serially until
the model writes `<|para|>` (adaptive mode) or the caller forks explicitly; then every live branch
decodes in the same forward pass, each over the shared prefix and its own tokens; when all
branches are closed, the join feeds `<|/para|>` (or the next serial text) over the whole cache:
no branch is recomputed and no token is duplicated.

Invariant: the cached tokens plus each stream's `pending` tokens are exactly the sequence's text.
"""

from __future__ import annotations

import dataclasses
import time
import weakref
from collections.abc import Generator
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import Literal, TypeVar

import torch
from pydantic import BaseModel

from .anti_loop import History, title_bans, word_mask
from .model_loader import LoadedModel
from .model_runner import Forward, KVSlice, KVState, ModelRunner
from .protocol import (
    SERIAL_TAG,
    Allowed,
    Branch,
    Constraint,
    ParallelBlock,
    Phase,
    PositionCounter,
    Response,
    SerialSegment,
    Tag,
    block_header,
    branch_seed,
)
from .sampler import Sampler
from .sampling import SamplingParams

Mode = Literal["aspd", "ar"]
T = TypeVar("T")
Steps = Generator[Forward, torch.Tensor, T]  # yields one forward's worth of work, is sent its logits


class EngineError(ValueError):
    """A request the engine cannot serve (prompt too long, bad state): a user error."""


# --------------------------------------------------------------------------- state


@dataclass(eq=False)
class Stream:
    """The serial stream of a sequence, or one branch."""

    tag: Tag
    history: History  # what this stream wrote (the anti-loop rule's view)
    pending: list[int] = field(default_factory=list)  # to feed at the next forward
    written: list[tuple[int, int]] = field(default_factory=list)  # branch tokens fed: (token, cache index)
    generated: list[int] = field(default_factory=list)  # sampled by this call (seed excluded)
    title: str = ""
    want_logits: bool = True
    finish: str | None = None
    # Plain branches decode with their own sampling and stop rules (a DSL gen per branch);
    # None: the run's.
    sampler: Sampler | None = None
    stops: tuple[str, ...] | None = None
    stop_ids: set[int] | None = None
    max_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Written:
    token: int
    tag: Tag
    index: int  # where it sits in the (interleaved) cache


@dataclass(eq=False)
class Sequence:
    kv: KVState
    serial: Stream
    positions: PositionCounter = field(default_factory=PositionCounter)
    written: list[Written] = field(default_factory=list)  # training order: branch after branch
    next_block: int = 1
    open_branches: list[Stream] = field(default_factory=list)
    block_open: bool = False  # a plain block opened by open_block (its branches may all be idle)
    closed: str | None = None  # why no more tokens may be added

    @property
    def length(self) -> int:
        return len(self.written) + len(self.serial.pending) + sum(len(b.written) for b in self.open_branches)

    def written_sequence(self) -> tuple[list[int], list[Tag]]:
        """Token ids and tags in training order (what a full forward with the protocol mask sees)."""
        return [w.token for w in self.written], [w.tag for w in self.written]


class BlockStats(BaseModel):
    titles: list[str]
    branch_tokens: list[int]
    steps: int


class GenerationOutput(BaseModel):
    """What one generate or fork call produced, with its timings."""

    text: str
    markup: str
    response: Response
    finish_reason: str
    stop_token: int | None = None  # the stop token id that ended a serial generation, if one did
    prompt_tokens: int
    completion_tokens: int
    serial_tokens: int
    parallel_tokens: int
    forward_passes: int
    blocks: list[BlockStats]
    ttft_s: float
    total_s: float
    # Per serial token, when asked: (log-prob, token id, top alternatives as (log-prob, token id)).
    token_logprobs: list[tuple[float, int, list[tuple[float, int]]]] | None = None

    @classmethod
    def empty(cls, prompt_tokens: int = 0, finish_reason: str = "abort") -> GenerationOutput:
        """Nothing generated (a request ended before it started)."""
        return cls(text="", markup="", response=Response(segments=()), finish_reason=finish_reason,
                   prompt_tokens=prompt_tokens, completion_tokens=0, serial_tokens=0, parallel_tokens=0,
                   forward_passes=0, blocks=[], ttft_s=0.0, total_s=0.0)

    @property
    def critical_path_tokens(self) -> int:
        """Tokens on the longest chain of dependent steps: serial ones plus each block's longest branch."""
        return self.serial_tokens + sum(max(b.branch_tokens, default=0) for b in self.blocks)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.total_s if self.total_s > 0 else 0.0


_CLOSE_BLOCK = object()  # marks, in a feed plan, where the positions of a block are closed


# --------------------------------------------------------------------------- engine


class Engine:
    def __init__(self, loaded: LoadedModel, fast: bool | None = None, attention: str = "auto"):
        self.loaded = loaded
        self.tok = loaded.tokenizer
        self.ids = loaded.ids
        self.runner = ModelRunner(loaded.model, fast=fast, attention_backend=attention,
                                  weights=loaded.weights, gguf=loaded.gguf, lora=loaded.lora,
                                  dense_rows=loaded.dense_rows)
        self.max_len = self.runner.max_positions
        self.words = word_mask(self.tok, self.runner.vocab_size, self.runner.device, exclude=self.ids.markup)
        self._live: weakref.WeakSet[Sequence] = weakref.WeakSet()

    # ----------------------------------------------------------------- text helpers

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Seq[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        msgs = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        if not getattr(self.tok, "chat_template", None):
            return self.encode(user)
        out = self.tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        return list(out["input_ids"] if hasattr(out, "keys") else out)

    # ----------------------------------------------------------------- sequences

    def new_sequence(self, prompt: str | Seq[int], prefix: KVSlice | None = None) -> Sequence:
        """A sequence for `prompt`; with `prefix`, the K/V of its first `prefix.n` tokens is taken
        from the prefix cache instead of being computed again."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise EngineError("the prompt is empty")
        self._check_room(len(ids), 1)
        seq = Sequence(kv=self.runner.new_kv(), serial=self._stream(SERIAL_TAG))
        self._live.add(seq)
        n = prefix.n if prefix is not None else 0
        if n >= len(ids):
            raise EngineError("a cached prefix must leave at least one prompt token to compute")
        if n:
            seq.kv.load(prefix)
            seq.written = [Written(t, SERIAL_TAG, i) for i, t in enumerate(ids[:n])]
            seq.positions.next_serial = n
        self._push(seq.serial, ids[n:])
        return seq

    @staticmethod
    def cacheable_prefix(seq: Sequence) -> list[int]:
        """The tokens of the sequence's longest computed serial prefix (what a prefix cache may keep)."""
        n = 0
        for w in seq.written:
            if w.index != n or w.tag != SERIAL_TAG:
                break
            n += 1
        return [w.token for w in seq.written[:n]]

    def export_prefix(self, seq: Sequence, n: int) -> KVSlice:
        """The K/V of the sequence's first n tokens, for the prefix cache. They must be serial tokens
        already in the cache, in order (a prompt's tokens are)."""
        if n > len(self.cacheable_prefix(seq)):
            raise EngineError(f"the first {n} tokens are not a computed serial prefix")
        return seq.kv.export(n)

    def extend(self, seq: Sequence, text: str | Seq[int]) -> None:
        """Append serial text (fed lazily with the next forward)."""
        self._check_serial(seq)
        ids = self.encode(text) if isinstance(text, str) else list(text)
        self._check_room(seq.length + len(ids), 0)
        self._push(seq.serial, ids)

    def prefill(self, seq: Sequence, keep: int = 0, logits_from: int | None = None) -> torch.Tensor | None:
        """Feed pending serial text now (otherwise it rides along with the next forward), all but the
        last `keep` tokens. With `logits_from`, return the log-probabilities [rows, vocab] of the fed
        rows whose index in the text is >= logits_from (prompt log-probs)."""
        self._check_open(seq)
        s = seq.serial
        held, s.pending = s.pending[len(s.pending) - keep:] if keep else [], s.pending[:len(s.pending) - keep]
        start = len(seq.written)
        if logits_from is None or not s.pending:
            s.want_logits = False
            self._feed(seq, [s])
            s.pending = held
            return None
        if logits_from < start:
            raise EngineError(f"log-probs from token {logits_from} need tokens that are already cached")
        s.want_logits = False
        rows = self._feed(seq, [s], rows_from=logits_from - start)[s]
        s.pending = held
        return torch.log_softmax(rows, -1)

    # ----------------------------------------------------------------- sequences across requests

    def copy_sequence(self, seq: Sequence) -> Sequence:
        """An independent sequence with the same text and K/V: a server request forked off another's
        end. Its later tokens can be grafted back onto the original as a branch (`graft`)."""
        self._check_serial(seq)
        out = Sequence(kv=seq.kv.copy_into(self.runner.new_kv()),
                       serial=self._stream(SERIAL_TAG, seq.serial.history.copy()),
                       positions=dataclasses.replace(seq.positions, _lengths={}),
                       written=list(seq.written), next_block=seq.next_block)
        out.serial.pending = list(seq.serial.pending)
        self._live.add(out)
        return out

    def graft(self, dst: Sequence, branches: Seq[Sequence]) -> None:
        """The ASPD join across sequences. Each of `branches` holds dst's text plus its own serial
        tokens (forked off dst, or computed from the same prefix); their K/V past that point is
        appended to dst's cache as the branches of one block, with the positions and mask they have
        when decoded inside a block, and the block closes: dst goes on over all branches, no re-prefill."""
        if len(branches) < 1:
            raise EngineError("a join needs at least one branch")
        for x in (dst, *branches):
            self._check_serial(x)
            if x.serial.pending:
                self.prefill(x)
        n0 = len(dst.written)
        base = [w.token for w in dst.written]
        tails = []
        for j, b in enumerate(branches):
            if b is dst or [w.token for w in b.written[:n0]] != base:
                raise EngineError(f"branch {j} does not continue the destination's text")
            tail = b.written[n0:]
            if any(w.tag != SERIAL_TAG for w in tail):
                raise EngineError(f"branch {j} opened a parallel block of its own; it cannot be joined as a branch")
            tails.append(tail)
        block = dst.next_block
        dst.next_block += 1
        for j, (b, tail) in enumerate(zip(branches, tails), start=1):
            if not tail:
                continue
            tag = Tag(block, j)
            start = dst.kv.length
            for _ in tail:
                dst.positions.take(tag)
            dst.kv.append(b.kv.gather([w.index for w in tail]), [tag] * len(tail))
            dst.written.extend(Written(w.token, tag, start + i) for i, w in enumerate(tail))
            dst.serial.history.merge(b.serial.history)
        dst.positions.close_block()

    def release(self, seq: Sequence) -> None:
        """Drop a sequence's K/V now (a finished or cancelled request)."""
        seq.closed = seq.closed or "released"
        seq.kv = None
        seq.open_branches, seq.block_open = [], False
        self._live.discard(seq)

    @property
    def live_sequences(self) -> int:
        """Sequences still holding K/V (not released and still referenced): a leak check."""
        return sum(1 for x in self._live if x.kv is not None)

    def next_logits(self, seq: Sequence) -> torch.Tensor:
        """Float32 logits of the token after the sequence's current text (feeds what is pending)."""
        self._check_open(seq)
        if seq.open_branches or seq.block_open:
            raise EngineError("the sequence is inside a parallel block")
        return self._serial_logits(seq)

    def text(self, seq: Sequence) -> str:
        return self.decode(self.tokens(seq))

    @staticmethod
    def tokens(seq: Sequence) -> list[int]:
        """The sequence's token ids in written order (pending serial tokens included)."""
        return [w.token for w in seq.written] + seq.serial.pending

    def _stream(self, tag: Tag, history: History | None = None) -> Stream:
        return Stream(tag=tag, history=history or History(self.words))

    @staticmethod
    def _push(stream: Stream, ids: Seq[int]) -> None:
        stream.pending.extend(ids)

    def _check_room(self, total: int, extra: int) -> None:
        if total + extra > self.max_len:
            raise EngineError(f"the text would have {total} tokens; the model's context window is {self.max_len}")

    @staticmethod
    def _check_open(seq: Sequence) -> None:
        if seq.closed:
            raise EngineError(f"this sequence accepts no more tokens: {seq.closed}")

    @classmethod
    def _check_serial(cls, seq: Sequence) -> None:
        cls._check_open(seq)
        if seq.block_open or seq.open_branches:
            raise EngineError("the sequence is inside a parallel block: join it first")

    # ----------------------------------------------------------------- the forward step

    def _drive(self, steps: Steps[T]) -> T:
        """Run a step generator to the end, one forward at a time (batch of one). A serving loop
        drives many at once instead, with one `forward_many` per step."""
        try:
            fwd = next(steps)
            while True:
                fwd = steps.send(self.runner.forward_many([fwd])[0])
        except StopIteration as done:
            return done.value

    def _feed(self, seq: Sequence, plan: Seq[Stream | object],
              rows_from: int | None = None) -> dict[Stream, torch.Tensor]:
        return self._drive(self._feed_steps(seq, plan, rows_from))

    def _feed_steps(self, seq: Sequence, plan: Seq[Stream | object],
                    rows_from: int | None = None) -> Steps[dict[Stream, torch.Tensor]]:
        """One forward over every stream's pending tokens, in plan order; logits for those that want
        them (their last token), or, with `rows_from` and one stream, its rows from that index on."""
        tokens, positions, tags, at, owners = [], [], [], [], []
        for item in plan:
            if item is _CLOSE_BLOCK:
                self._close_block(seq)
                continue
            s: Stream = item
            for t in s.pending:
                idx = seq.kv.length + len(tokens)
                if s.tag.block == 0:
                    seq.written.append(Written(t, s.tag, idx))
                else:
                    s.written.append((t, idx))
                tokens.append(t)
                tags.append(s.tag)
                positions.append(seq.positions.take(s.tag))
            if s.want_logits and s.pending:
                at.append(len(tokens) - 1)
                owners.append(s)
            s.pending = []
        if not tokens:
            return {}
        if positions[-1] >= self.max_len:
            seq.closed = "the context window is full"
            raise EngineError(f"the sequence reached the model's context window ({self.max_len} tokens)")
        if rows_from is not None:
            logits = yield Forward(seq.kv, tokens, positions, tags, list(range(rows_from, len(tokens))))
            return {plan[0]: logits}
        logits = yield Forward(seq.kv, tokens, positions, tags, at)
        return dict(zip(owners, logits))

    @staticmethod
    def _close_block(seq: Sequence) -> None:
        """All branches are written: they enter the written sequence in order, and serial positions
        continue after them. Whatever is fed next (e.g. <|/para|>) comes after the block."""
        seq.positions.close_block()
        for b in seq.open_branches:
            seq.written.extend(Written(t, b.tag, i) for t, i in b.written)

    def _serial_logits(self, seq: Sequence) -> torch.Tensor:
        return self._drive(self._serial_logits_steps(seq))

    def _serial_logits_steps(self, seq: Sequence) -> Steps[torch.Tensor]:
        """Next-token logits of the serial stream. With nothing pending (right after a plain join, or
        a call that ended on EOS), the last written token is hidden in the cache and fed again as a
        serial token: it then sees every branch, exactly as in the written sequence."""
        s = seq.serial
        self._ensure_pending(seq, s)
        s.want_logits = True
        return (yield from self._feed_steps(seq, [s]))[s]

    @classmethod
    def _retract_stream(cls, seq: Sequence, s: Stream, n: int) -> None:
        """Take the last n fed tokens of a stream back out: hidden in the cache, positions given back."""
        if s.tag.block == 0:
            cls._retract(seq, n)
            return
        for _, idx in s.written[-n:]:
            seq.kv.kill(idx)
        del s.written[-n:]
        seq.positions.drop(s.tag, n)

    @staticmethod
    def _retract(seq: Sequence, n: int) -> list[int]:
        """Take the last n written tokens (serial, or the final tokens of a joined block) back out."""
        out = []
        for _ in range(n):
            w = seq.written.pop()
            seq.kv.kill(w.index)
            seq.positions.next_serial -= 1
            out.append(w.token)
        return out[::-1]

    # ----------------------------------------------------------------- generate

    def generate(self, seq: Sequence, params: SamplingParams, mode: Mode = "aspd") -> GenerationOutput:
        """Decode serially; in `aspd` mode the model may open parallel blocks, which run in parallel."""
        return self._drive(self.generate_steps(seq, params, mode))

    def generate_steps(self, seq: Sequence, params: SamplingParams, mode: Mode = "aspd",
                       logprobs: int | None = None, on_run=None) -> Steps[GenerationOutput]:
        """`generate` as a step generator: it yields one `Forward` per step and takes its logits back
        (the serving loop batches the steps of many requests into one forward). `logprobs=k` records
        each serial token's log-prob and its k best alternatives; `on_run` receives the run's state
        (for streaming its text so far)."""
        self._check_serial(seq)
        self._check_room(seq.length, 1)
        bias = self.loaded.fork_bias if params.fork_bias is None else params.fork_bias
        constraint = Constraint(self.ids, adaptive=(mode == "aspd"), max_title_tokens=params.max_title_tokens,
                                max_branches=params.max_branches, fork_bias=bias)
        run = _Run(self, seq, params, constraint, explicit=False)
        if logprobs is not None:
            run.logprobs, run.top_k = [], logprobs
        if on_run is not None:
            on_run(run)
        if params.max_new_tokens > 0:
            yield from run.steps()
        return run.output()

    def fork(self, seq: Sequence, seeds: Seq[str], params: SamplingParams, markup: bool = False) -> GenerationOutput:
        """Explicit fork: decode one branch per seed in parallel over the shared prefix, then join.

        With `markup` the block is written in ASPD markup (the seeds are titles); without it the
        seeds are plain text and the join appends the branches in order (works on any base model).
        """
        self._check_serial(seq)
        if len(seeds) < 2:
            raise EngineError("a fork needs at least 2 branches")
        if markup and any(not t.strip() for t in seeds):
            raise EngineError("branch titles must be non-empty")
        self._check_room(seq.length, 1)
        run = _Run(self, seq, params, Constraint(self.ids, adaptive=False), explicit=True, markup=markup)
        if markup:
            run.constraint.phase = Phase.BRANCH
            self._push(seq.serial, self.encode(block_header(seeds)))
            run.open_block(list(seeds))
        else:
            run.open_block(list(seeds), seeds=[self.encode(s) for s in seeds])
        self._drive(run.steps())
        return run.output()

    # ----------------------------------------------------------------- plain blocks, step by step
    # A program's parallel block: branches are opened, extended, decoded (any subset at once, each
    # with its own sampling) and scored, then joined; the same calls run it one branch at a time.

    def open_block(self, seq: Sequence) -> None:
        """Open a plain parallel block (no markup) on a sequence; branches are added with add_branch."""
        self._check_serial(seq)
        seq.block_open = True
        seq.next_block += 1

    def add_branch(self, seq: Sequence, text: str | Seq[int] = ()) -> int:
        """A new branch of the open block, over the shared prefix; returns its index."""
        if not seq.block_open:
            raise EngineError("no parallel block is open")
        j = len(seq.open_branches) + 1
        br = self._stream(Tag(seq.next_block - 1, j), seq.serial.history.copy())
        br.finish = "idle"
        seq.open_branches.append(br)
        self.branch_extend(seq, j - 1, text)
        return j - 1

    def branch_extend(self, seq: Sequence, branch: int, text: str | Seq[int]) -> None:
        ids = self.encode(text) if isinstance(text, str) else list(text)
        self._check_room(seq.length + len(ids), 0)
        self._push(self._branch(seq, branch), ids)

    def decode_branches(self, seq: Sequence, requests: dict[int, SamplingParams]) -> GenerationOutput:
        """Decode the given branches together (one forward per step) until each stops; each
        request's `max_new_tokens` caps its branch. Other branches' pending text rides along."""
        if not requests:
            raise EngineError("nothing to decode")
        for j in requests:
            self._ensure_pending(seq, self._branch(seq, j))
        total = SamplingParams(max_new_tokens=sum(p.max_new_tokens for p in requests.values()))
        run = _Run(self, seq, total, Constraint(self.ids, adaptive=False), explicit=True, markup=False,
                   join_at_end=False)
        for j, p in requests.items():
            b = seq.open_branches[j]
            # Each branch samples with its own generator: seeded branches give the same text
            # whether they decode alone or together.
            b.finish, b.generated, b.max_tokens = None, [], p.max_new_tokens
            b.history = History(self.words)
            b.sampler, b.stops, b.stop_ids = Sampler(p, self.runner.device), _stops(p), _stop_ids(p, self.ids.eos)
        self._drive(run.steps())
        return run.output(only=list(requests))

    def join(self, seq: Sequence, reprefill: bool = False, order: Seq[int] | None = None,
             discard: bool = False) -> None:
        """Close the open plain block: branch text joins the sequence in branch order (or `order`).

        The ASPD join keeps every branch's KV where it is (later tokens see all branches; no
        recompute). `reprefill` instead drops the branch KV and re-encodes the joined tokens
        causally, as one serial text: for models never trained on branch-isolated attention.
        `discard` drops the branches: the sequence goes on as if the block never was.
        """
        if not seq.block_open:
            raise EngineError("no parallel block is open")
        brs = seq.open_branches
        if order is not None:
            if sorted(order) != list(range(len(brs))):
                raise EngineError(f"join order {list(order)} is not a permutation of the {len(brs)} branches")
            brs = seq.open_branches = [brs[j] for j in order]
        if reprefill or discard:
            joined = []
            for b in brs:
                joined += [t for t, _ in b.written] + b.pending
                for _, idx in b.written:
                    seq.kv.kill(idx)
            seq.positions.abort_block()
            if reprefill:
                self._push(seq.serial, joined)
        else:
            for b in brs:
                b.want_logits = False
            if seq.serial.pending or any(b.pending for b in brs):
                self._feed(seq, self._in_block(seq, [*brs, _CLOSE_BLOCK]))
            else:
                self._close_block(seq)
        if not discard:
            for b in brs:
                seq.serial.history.merge(b.history)
        seq.open_branches, seq.block_open = [], False

    def _ensure_pending(self, seq: Sequence, b: Stream) -> None:
        """Logits come from the last token fed; if a stream's last token is already cached, it is
        hidden and fed again."""
        if b.pending:
            return
        if b.tag.block == 0:
            b.pending = self._retract(seq, 1)
            return
        if not b.written:
            raise EngineError("a branch must have text before it decodes or selects")
        tok = b.written[-1][0]
        self._retract_stream(seq, b, 1)
        b.pending = [tok]

    @staticmethod
    def _in_block(seq: Sequence, plan: list) -> list:
        """A feed plan inside a block: serial text still pending (the prefix) goes first."""
        seq.serial.want_logits = False
        return ([seq.serial] if seq.serial.pending else []) + plan

    def _branch(self, seq: Sequence, branch: int) -> Stream:
        self._check_open(seq)
        if not seq.block_open or not 0 <= branch < len(seq.open_branches):
            raise EngineError(f"no open branch {branch}")
        return seq.open_branches[branch]

    # ----------------------------------------------------------------- scoring (select)

    def score(self, seq: Sequence, continuations: Seq[str], branch: int | None = None) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after the sequence's text (or after a
        branch of its open block). The cache is left as it was: the probes are fed, then hidden."""
        ids = [self.encode(c) for c in continuations]
        if not ids or any(not x for x in ids):
            raise EngineError("every choice must be non-empty text")
        if branch is None:
            if seq.open_branches or seq.block_open:
                raise EngineError("the sequence is inside a parallel block")
            first = torch.log_softmax(self._serial_logits(seq), -1)
            # All choices in one forward, as the branches of a throwaway block over the prefix.
            block, base = seq.next_block, seq.positions.next_serial
            seq.next_block += 1
            probes = [(Tag(block, i + 1), list(range(base, base + len(x) - 1)), x[:-1]) for i, x in enumerate(ids)]
            rows = self._probe(seq, probes)
            return [_token_logprobs(first, r, x) for r, x in zip(rows, ids)]
        b = self._branch(seq, branch)
        self._ensure_pending(seq, b)
        b.want_logits = True
        first = torch.log_softmax(self._feed(seq, self._in_block(seq, [b]))[b], -1)
        out = []
        for x in ids:  # one probe per choice: same-branch probes would see each other
            start = seq.positions.peek(b.tag)
            rows = self._probe(seq, [(b.tag, list(range(start, start + len(x) - 1)), x[:-1])])
            out.append(_token_logprobs(first, rows[0], x))
        return out

    def _probe(self, seq: Sequence, probes: list[tuple[Tag, list[int], list[int]]]) -> list[torch.Tensor]:
        """Feed (tag, positions, tokens) probes with logits at every row, then hide them again."""
        toks = [t for _, _, x in probes for t in x]
        if not toks:
            return [torch.empty(0, self.runner.vocab_size) for _ in probes]
        start = seq.kv.length
        logits = self.runner.forward(seq.kv, toks, [p for _, ps, _ in probes for p in ps],
                                     [tag for tag, _, x in probes for _ in x], range(len(toks)))
        for i in range(start, start + len(toks)):
            seq.kv.kill(i)
        out, at = [], 0
        for _, _, x in probes:
            out.append(torch.log_softmax(logits[at:at + len(x)], -1))
            at += len(x)
        return out


def _stops(p: SamplingParams) -> tuple[str, ...]:
    return tuple(x for x in p.stop if x)


def _stop_ids(p: SamplingParams, eos: frozenset[int]) -> set[int]:
    return set(p.stop_token_ids) | (set() if p.ignore_eos else set(eos))


def token_logprob(lp: torch.Tensor, tok: int, top: int) -> tuple[float, int, list[tuple[float, int]]]:
    """(log-prob of `tok`, tok, the `top` best (log-prob, id) alternatives) from a log-prob row."""
    if not top:
        return lp[tok].item(), tok, []
    best = torch.topk(lp, top)
    return lp[tok].item(), tok, list(zip(best.values.tolist(), best.indices.tolist()))


def _token_logprobs(first: torch.Tensor, rows: torch.Tensor, ids: list[int]) -> list[float]:
    """Log-prob of each token of `ids`: the first from `first`, the rest from the probe rows."""
    out = [first[ids[0]].item()]
    out += [rows[k, t].item() for k, t in enumerate(ids[1:])]
    return out


class _Run:
    """The state of one generate or fork call."""

    def __init__(self, eng: Engine, seq: Sequence, params: SamplingParams, constraint: Constraint,
                 explicit: bool, markup: bool = True, join_at_end: bool = True):
        self.eng, self.seq, self.params, self.constraint = eng, seq, params, constraint
        self.ids = eng.ids
        self.explicit = explicit  # an explicit fork: stop at the join
        self.markup = markup  # branches are written in ASPD markup (closed by <|/branch|>)
        self.join_at_end = join_at_end  # False: stop when the branches stop, leave the block open
        self.sampler = Sampler(params, eng.runner.device)
        self.left = params.max_new_tokens
        self.prompt_tokens = seq.length
        self.forwards0 = eng.runner.forwards
        self.t0 = time.perf_counter()
        self.ttft: float | None = None
        self.finish = "length"
        self.stop_token: int | None = None
        self.done = False
        self.segments: list = []
        self.blocks: list[BlockStats] = []
        self.serial_count = self.parallel_count = 0
        self.serial_start = 0  # start of the current serial segment in seq.serial.generated
        self.header_start = 0
        self.title_ids: list[list[int]] = []  # the current block's titles
        self.earlier_titles: list[list[int]] = []  # those of this answer's earlier blocks
        self.block_steps = 0
        self.stops = _stops(params)
        self.stop_ids = _stop_ids(params, self.ids.eos)
        self.logprobs: list[tuple[float, int, list[tuple[float, int]]]] | None = None
        self.top_k = 0
        seq.serial.generated = []
        seq.serial.history = History(eng.words)  # the anti-loop rule sees what this call writes, as in SGLang

    # ----------------------------------------------------------------- main loop

    def steps(self) -> Steps[None]:
        seq = self.seq
        while not self.done:
            if seq.open_branches:
                yield from self._branch_step()
            else:
                yield from self._serial_step()
            if not self.done and self.left <= 0:
                self.finish, self.done = "length", True
                if seq.open_branches and self.join_at_end:
                    seq.closed = "generation stopped inside a parallel block (max_new_tokens)"

    def _sampled(self) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self.t0

    def _serial_step(self) -> Steps[None]:
        logits = yield from self.eng._serial_logits_steps(self.seq)
        self._serial_token(logits)

    def _serial_token(self, logits: torch.Tensor) -> None:
        s = self.seq.serial
        allowed = self.constraint.allowed(tokens_left=self.left)
        titles = [*self.earlier_titles, *self.title_ids]  # no title repeats one of this answer
        if self.constraint.phase is Phase.TITLE and allowed.only is None and len(titles) > 1:
            ban = title_bans(titles, self.eng.words, self.ids.end_title)
            if ban:
                allowed = dataclasses.replace(allowed, banned=allowed.banned | ban)
        tok = self.sampler(logits[None], [s.history], [allowed])[0]
        self._sampled()
        if tok in self.stop_ids:
            self.finish, self.done, self.stop_token = "stop", True, tok
            return
        if self.logprobs is not None:
            self._record_logprob(logits, tok)
        self.left -= 1
        self.serial_count += 1
        s.generated.append(tok)
        if allowed.anti_loop and tok not in self.ids.markup:
            s.history.add(tok)
        self._track_title(tok)
        self.constraint.advance(tok)
        self.eng._push(s, [tok])
        if tok == self.ids.para:
            self._flush_serial(self.header_start)
            self.open_block([self.eng.decode(t) for t in self.title_ids])
        elif self.stops and tok not in self.ids.markup and self._apply_stop(s, self.stops, self.serial_start):
            self.finish, self.done = "stop", True

    def _record_logprob(self, logits: torch.Tensor, tok: int) -> None:
        self.logprobs.append(token_logprob(torch.log_softmax(logits, -1), tok, self.top_k))

    def partial_text(self) -> str:
        """The answer's text so far without an unfinished parallel block or header: it only grows
        (what a stream sends). Stop strings are not cut yet."""
        done = Response(segments=tuple(self.segments)).plain_text()
        if self.seq.open_branches:
            return done
        end = self.header_start if self.constraint.phase in (Phase.TITLE, Phase.TITLES_CLOSED) else None
        toks = [t for t in self.seq.serial.generated[self.serial_start:end] if t not in self.ids.markup]
        return done + self.eng.decode(toks)

    def _track_title(self, tok: int) -> None:
        if tok == self.ids.title:
            if self.constraint.phase is not Phase.TITLES_CLOSED:  # the first title of a header
                self.earlier_titles += self.title_ids
                self.title_ids, self.header_start = [], len(self.seq.serial.generated) - 1
            self.title_ids.append([])
        elif self.constraint.phase is Phase.TITLE and tok != self.ids.end_title:
            self.title_ids[-1].append(tok)

    def _apply_stop(self, s: Stream, stops: tuple[str, ...], start: int = 0) -> bool:
        """If a stop string appears in what `s` generated since `start`, cut text and cache right
        before it (SGLang's semantics) and return True."""
        seg = s.generated[start:]
        n_keep, rest = self._cut_at_stop(seg, stops)
        if n_keep is None:
            return False
        drop = len(seg) - n_keep
        fed = drop - len(s.pending)  # the newest token is still pending
        s.pending = []
        if fed > 0:
            self.eng._retract_stream(self.seq, s, fed)
        if self.logprobs is not None and s is self.seq.serial:
            del self.logprobs[max(len(self.logprobs) - drop, 0):]
        del s.generated[len(s.generated) - drop:]
        if rest:  # the stop string began inside a token: keep that token's text before it
            extra = self.eng.encode(rest)
            s.generated.extend(extra)
            self.eng._push(s, extra)
        return True

    def _cut_at_stop(self, toks: list[int], stops: tuple[str, ...]) -> tuple[int | None, str]:
        """(tokens to keep, leftover text) for the first stop string in decode(toks), or (None, "")."""
        text = self.eng.decode(toks)
        hits = [i for i in (text.find(x) for x in stops) if i >= 0]
        if not hits:
            return None, ""
        cut = min(hits)
        n = 0
        while n < len(toks) and len(self.eng.decode(toks[:n + 1])) <= cut:
            n += 1
        return n, text[len(self.eng.decode(toks[:n])):cut]

    # ----------------------------------------------------------------- blocks

    def open_block(self, titles: list[str], seeds: list[list[int]] | None = None) -> None:
        """One branch per title, seeded with the protocol's branch opening (or the given plain seeds)."""
        seq = self.seq
        block = seq.next_block
        seq.next_block += 1
        seq.serial.want_logits = False
        seq.open_branches = []
        for j, title in enumerate(titles, start=1):
            br = self.eng._stream(Tag(block, j), seq.serial.history.copy())
            br.title, br.max_tokens = title, self.params.max_branch_tokens
            self.eng._push(br, seeds[j - 1] if seeds is not None else self.eng.encode(branch_seed(title)))
            seq.open_branches.append(br)
        self.block_steps = 0

    def _branch_step(self) -> Steps[None]:
        """One forward over the live branches; when all are closing, the join rides along."""
        seq = self.seq
        live = [b for b in seq.open_branches if b.finish is None or b.pending]
        joining = all(b.finish is not None for b in seq.open_branches)
        if joining and not self.join_at_end:
            self.finish, self.done = "branches", True
            return
        for b in live:
            b.want_logits = b.finish is None
        plan: list = ([seq.serial] if seq.serial.pending else []) + live
        if joining:
            plan.append(_CLOSE_BLOCK)
            if self.markup and not self.explicit:
                seq.serial.pending, seq.serial.want_logits = [self.ids.end_para], True
                plan.append(seq.serial)
        logits = yield from self.eng._feed_steps(seq, plan)
        self.block_steps += 1
        if joining:
            self._join()
            if self.explicit:
                if self.markup:
                    self.eng._push(seq.serial, [self.ids.end_para])  # fed with whatever follows
                self.finish, self.done = "join", True
            else:
                self._serial_token(logits[seq.serial])
            return
        rows = [b for b in live if b in logits]
        if rows:
            for b, tok in zip(rows, self._sample_rows(rows, logits)):
                self._branch_token(b, tok)
            self._sampled()

    def _sample_rows(self, rows: list[Stream], logits: dict[Stream, torch.Tensor]) -> list[int]:
        """One token per branch: in one call where the branches share a sampler, else each its own."""
        allowed = [self._branch_allowed(b) for b in rows]
        if all(b.sampler is None for b in rows):
            return self.sampler(torch.stack([logits[b] for b in rows]), [b.history for b in rows], allowed)
        return [b.sampler(logits[b][None], [b.history], [a])[0] for b, a in zip(rows, allowed)]

    def _branch_allowed(self, b: Stream) -> Allowed:
        if self.markup:
            return self.constraint.allowed(len(b.generated), self.params.max_branch_tokens)
        return Allowed(banned=self.ids.markup)

    def _branch_token(self, b: Stream, tok: int) -> None:
        self.left -= 1
        self.parallel_count += 1
        if self.markup:
            tok = self.constraint.map_sampled(tok)
            if tok == self.ids.end_branch:
                b.finish = "stop"
                self.eng._push(b, [tok])  # written to the cache with the next step, then it leaves
                return
        elif tok in (self.stop_ids if b.stop_ids is None else b.stop_ids):
            b.finish = "stop"  # EOS is not part of the text: nothing more to feed
            return
        b.generated.append(tok)
        b.history.add(tok)
        self.eng._push(b, [tok])
        if self.markup:
            return
        stops = self.stops if b.stops is None else b.stops
        if stops and self._apply_stop(b, stops):
            b.finish = "stop"
        elif len(b.generated) >= b.max_tokens:
            b.finish = "length"  # its last token is still fed, with the next step

    def _join(self) -> None:
        seq = self.seq
        for b in seq.open_branches:
            seq.serial.history.merge(b.history)
        self._record_block()
        seq.open_branches = []
        if self.markup and not self.explicit:
            self.constraint.join()
            seq.serial.generated.append(self.ids.end_para)
        self.serial_start = len(seq.serial.generated)

    def _record_block(self, only: list[int] | None = None) -> None:
        brs = self.seq.open_branches
        if only is not None:
            brs = [brs[j] for j in only]
        branches = tuple(Branch(title=b.title, body=self.eng.decode(b.generated)) for b in brs)
        self.segments.append(ParallelBlock(branches=branches))
        self.blocks.append(BlockStats(titles=[b.title for b in brs], branch_tokens=[len(b.generated) for b in brs],
                                      steps=self.block_steps))

    def _flush_serial(self, end: int | None = None) -> None:
        s = self.seq.serial
        toks = [t for t in s.generated[self.serial_start:end] if t not in self.ids.markup]
        if toks:
            self.segments.append(SerialSegment(text=self.eng.decode(toks)))

    # ----------------------------------------------------------------- result

    def output(self, only: list[int] | None = None) -> GenerationOutput:
        if self.seq.open_branches:  # cut by max_new_tokens inside a block, or a plain block left open
            self._record_block(only)
        elif self.constraint.phase in (Phase.TITLE, Phase.TITLES_CLOSED):  # cut inside a block header
            self._flush_serial(self.header_start)
        else:
            self._flush_serial()
        resp = Response(segments=tuple(self.segments))
        total = time.perf_counter() - self.t0
        # A plain fork has no markup: its text is each seed followed by its branch, in order.
        text = resp.plain_text() if self.markup else "".join(b.title + b.body for b in resp.blocks[0].branches)
        if not self.join_at_end:
            text = "".join(b.body for b in resp.blocks[0].branches)
        return GenerationOutput(
            text=text, markup=resp.markup(), response=resp, finish_reason=self.finish,
            stop_token=self.stop_token, prompt_tokens=self.prompt_tokens,
            completion_tokens=self.serial_count + self.parallel_count,
            serial_tokens=self.serial_count, parallel_tokens=self.parallel_count,
            forward_passes=self.eng.runner.forwards - self.forwards0, blocks=self.blocks,
            ttft_s=self.ttft if self.ttft is not None else total, total_s=total, token_logprobs=self.logprobs)
