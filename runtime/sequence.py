"""A sequence's state: one growing text, one flat KV cache, its streams and what was written.

`SeqState` owns its bookkeeping: which tokens are cached where (interleaved branches, tags, dead
tokens), the position counter, the open block and why the sequence may be closed. The engine and
the runs change it only through its methods. No tensors are built here: `take` turns the pending
tokens of a feed plan into one forward's rows; the engine runs the forward.

Invariant: the cached tokens plus each stream's `pending` tokens are exactly the sequence's text.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Sequence as Seq
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import UserError
from .outputs import FinishReason
from .protocol import SERIAL, SERIAL_TAG, PositionCounter, Tag

if TYPE_CHECKING:
    from .anti_loop import History
    from .model_runner import KVSlice, KVState
    from .token_sampler import Sampler


class EngineError(UserError, ValueError):
    """A request the engine cannot serve (prompt too long, bad state): a user error."""


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
    finish: FinishReason | None = None
    # Plain branches decode with their own sampling and stop rules (a DSL gen per branch);
    # None: the run's.
    sampler: Sampler | None = None
    stops: tuple[str, ...] | None = None
    stop_ids: set[int] | None = None
    max_tokens: int = 0

    def push(self, ids: Iterable[int]) -> None:
        """Queue tokens: they are fed with the next forward."""
        self.pending.extend(ids)

    def restart(self, history: History, sampler: Sampler, stops: tuple[str, ...], stop_ids: set[int],
                max_tokens: int) -> None:
        """A plain branch decodes again, with its own sampling and stop rules."""
        self.finish, self.generated, self.max_tokens = None, [], max_tokens
        self.history, self.sampler, self.stops, self.stop_ids = history, sampler, stops, stop_ids


@dataclass(frozen=True, slots=True)
class Written:
    token: int
    tag: Tag
    index: int  # where it sits in the (interleaved) cache


CLOSE_BLOCK = object()  # marks, in a feed plan, where the positions of the open block are closed


@dataclass
class Feed:
    """One forward's worth of pending tokens, taken off a feed plan."""

    tokens: list[int] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)
    tags: list[Tag] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)  # rows whose logits are wanted: each owner's last token
    owners: list[Stream] = field(default_factory=list)


@dataclass(eq=False)
class SeqState:
    kv: KVState | None
    serial: Stream
    positions: PositionCounter = field(default_factory=PositionCounter)
    written: list[Written] = field(default_factory=list)  # training order: branch after branch
    next_block: int = 1
    open_branches: list[Stream] = field(default_factory=list)
    block_open: bool = False  # a plain block opened by open_plain_block (its branches may all be idle)
    closed: str | None = None  # why no more tokens may be added

    @property
    def length(self) -> int:
        return len(self.written) + len(self.serial.pending) + sum(len(b.written) for b in self.open_branches)

    def written_sequence(self) -> tuple[list[int], list[Tag]]:
        """Token ids and tags in training order (what a full forward with the protocol mask sees)."""
        return [w.token for w in self.written], [w.tag for w in self.written]

    # ----------------------------------------------------------------- checks and life

    def check_open(self) -> None:
        if self.closed:
            raise EngineError(f"this sequence accepts no more tokens: {self.closed}")

    def check_serial(self) -> None:
        self.check_open()
        if self.block_open or self.open_branches:
            raise EngineError("the sequence is inside a parallel block: join it first")

    def close(self, reason: str) -> None:
        """No more tokens may be added (the K/V stays: its text can still be read and cached)."""
        self.closed = reason

    def release(self) -> None:
        """Drop the K/V."""
        self.closed = self.closed or "released"
        self.kv = None
        self.open_branches, self.block_open = [], False

    def load_prefix(self, prefix: KVSlice, tokens: Seq[int]) -> None:
        """The K/V of the first `prefix.n` tokens, computed elsewhere (the prefix cache)."""
        self.kv.load(prefix)
        self.written = [Written(t, SERIAL_TAG, i) for i, t in enumerate(tokens)]
        self.positions.next_serial = len(tokens)

    def copy(self, kv: KVState, serial: Stream) -> SeqState:
        """The same text on another cache (a copy of this one's K/V) and serial stream."""
        out = SeqState(kv=kv, serial=serial, positions=PositionCounter(next_serial=self.positions.next_serial),
                       written=list(self.written), next_block=self.next_block)
        serial.pending = list(self.serial.pending)
        return out

    # ----------------------------------------------------------------- blocks

    def new_block(self) -> int:
        """The number of the next block (also for throwaway probe blocks)."""
        self.next_block += 1
        return self.next_block - 1

    def open_plain_block(self) -> None:
        self.block_open = True
        self.new_block()

    def start_block(self, branches: list[Stream]) -> None:
        """The branches of a block opened by the run (adaptive or explicit fork)."""
        self.serial.want_logits = False
        self.open_branches = branches

    def add_branch(self, branch: Stream) -> int:
        self.open_branches.append(branch)
        return len(self.open_branches) - 1

    def reorder_branches(self, order: Seq[int]) -> list[Stream]:
        self.open_branches = [self.open_branches[j] for j in order]
        return self.open_branches

    def end_block(self) -> None:
        self.open_branches, self.block_open = [], False

    def close_block(self) -> None:
        """All branches are written: they enter the written sequence in order, and serial positions
        continue after them. Whatever is fed next (e.g. <|/para|>) comes after the block."""
        self.positions.close_block()
        for b in self.open_branches:
            self.written.extend(Written(t, b.tag, i) for t, i in b.written)

    def discard_block(self) -> list[int]:
        """Hide the open block's tokens (fed or not) and give their positions back; returns them in
        branch order (what a re-prefill feeds serially)."""
        joined = []
        for b in self.open_branches:
            joined += [t for t, _ in b.written] + b.pending
            for _, idx in b.written:
                self.kv.kill(idx)
        self.positions.abort_block()
        return joined

    def append_branch(self, tag: Tag, tokens: Seq[int], kv: KVSlice) -> None:
        """Computed K/V of another sequence's tokens, appended as a branch of the open block (a graft)."""
        start = self.kv.length
        for _ in tokens:
            self.positions.take(tag)
        self.kv.append(kv, [tag] * len(tokens))
        self.written.extend(Written(t, tag, start + i) for i, t in enumerate(tokens))

    # ----------------------------------------------------------------- feeding and taking back

    def take(self, plan: Seq[Stream | object]) -> Feed:
        """Every stream's pending tokens in plan order, with positions and tags, as one forward's rows
        (they count as cached from now on); logits are wanted for the last token of each stream that
        wants them. `CLOSE_BLOCK` in the plan closes the open block at that point."""
        feed = Feed()
        for item in plan:
            if item is CLOSE_BLOCK:
                self.close_block()
                continue
            s: Stream = item
            for t in s.pending:
                idx = self.kv.length + len(feed.tokens)
                if s.tag.block == SERIAL:
                    self.written.append(Written(t, s.tag, idx))
                else:
                    s.written.append((t, idx))
                feed.tokens.append(t)
                feed.tags.append(s.tag)
                feed.positions.append(self.positions.take(s.tag))
            if s.want_logits and s.pending:
                feed.rows.append(len(feed.tokens) - 1)
                feed.owners.append(s)
            s.pending = []
        return feed

    def hide(self, indices: Iterable[int]) -> None:
        """Cached tokens nobody may attend to any more (probes)."""
        for i in indices:
            self.kv.kill(i)

    def retract(self, n: int) -> list[int]:
        """Take the last n written tokens (serial, or the final tokens of a joined block) back out."""
        out = []
        for _ in range(n):
            w = self.written.pop()
            self.kv.kill(w.index)
            self.positions.next_serial -= 1
            out.append(w.token)
        return out[::-1]

    def unfeed(self, n: int) -> None:
        """Take the last n serial tokens back out as if they had never been fed (a draft the model did
        not confirm): they must be the cache's last entries, which are then dropped, not hidden."""
        if n <= 0:
            return
        start = self.kv.length - n
        if [(w.tag, w.index) for w in self.written[-n:]] != [(SERIAL_TAG, start + i) for i in range(n)]:
            raise EngineError(f"the last {n} written tokens are not the cache's last serial tokens")
        del self.written[-n:]
        self.kv.truncate(n)
        self.positions.next_serial -= n

    def retract_stream(self, s: Stream, n: int) -> None:
        """Take the last n fed tokens of a stream back out: hidden in the cache, positions given back."""
        if s.tag.block == SERIAL:
            self.retract(n)
            return
        for _, idx in s.written[-n:]:
            self.kv.kill(idx)
        del s.written[-n:]
        self.positions.drop(s.tag, n)

    def ensure_pending(self, s: Stream) -> None:
        """Logits come from the last token fed; if a stream's last token is already cached, it is
        hidden and fed again. (With nothing pending right after a plain join, or a call that ended
        on EOS, the serial stream's last token then sees every branch, as in the written sequence.)"""
        if s.pending:
            return
        if s.tag.block == SERIAL:
            s.pending = self.retract(1)
            return
        if not s.written:
            raise EngineError("a branch must have text before it decodes or selects")
        tok = s.written[-1][0]
        self.retract_stream(s, 1)
        s.pending = [tok]
