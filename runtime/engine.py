"""The hybrid serial-parallel decoding engine: the facade over sequences and runs.

One sequence (`SeqState`, runtime/sequence.py) is one growing text with one flat KV cache. The
engine decodes it serially until the model writes `<|para|>` (adaptive mode) or the caller forks
explicitly; then every live branch decodes in the same forward pass, each over the shared prefix
and its own tokens; when all branches are closed, the join feeds `<|/para|>` (or the next serial
text) over the whole cache: no branch is recomputed and no token is duplicated. A decoding call is
a `Run` (runtime/run.py) of one kind, written as a step generator; the sync API drives it here,
one forward at a time, the serving loop drives many at once (`start`).
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from collections.abc import Sequence as Seq
from typing import TypeVar

import torch

from .anti_loop import History, word_mask
from .model_loader import LoadedModel
from .model_runner import Forward, KVSlice, ModelRunner
from .outputs import FinishReason, GenerationOutput
from .probe import probe, token_logprobs
from .protocol import SERIAL_TAG, Tag, block_header
from .roles import user_prompt
from .run import Run
from .run_kind import Mode, RunKind, Steps
from .sampling import SamplingParams
from .sequence import CLOSE_BLOCK, EngineError, SeqState, Stream
from .utf8 import utf8_table

T = TypeVar("T")


class Engine:
    def __init__(self, loaded: LoadedModel, fast: bool | None = None, attention: str = "auto", drafts: bool = True):
        """`drafts`: feed a block header's predictable tokens with the step before, verified there
        (`header_draft`; the text is the same either way)."""
        self.loaded = loaded
        self.drafts = drafts
        self.tok = loaded.tokenizer
        self.ids = loaded.ids
        self.runner = ModelRunner(loaded.model, fast=fast, attention_backend=attention,
                                  weights=loaded.weights, gguf=loaded.gguf, lora=loaded.lora,
                                  dense_rows=loaded.dense_rows)
        self.max_len = self.runner.max_positions
        self.words = word_mask(self.tok, self.runner.vocab_size, self.runner.device, exclude=self.ids.markup)
        self.utf8 = utf8_table(self.tok, self.runner.vocab_size, self.runner.device)
        self._live: weakref.WeakSet[SeqState] = weakref.WeakSet()

    # ----------------------------------------------------------------- text helpers

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Seq[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)

    def chat_prompt(self, user: str, system: str | None = None) -> list[int]:
        """The user's message in the chat template; a model without one gets it plain."""
        return user_prompt(self.tok, user, system)

    def new_history(self) -> History:
        """An empty anti-loop history under this engine's vocabulary rules."""
        return History(self.words, self.utf8)

    def new_stream(self, tag: Tag, history: History | None = None) -> Stream:
        return Stream(tag=tag, history=history or self.new_history())

    # ----------------------------------------------------------------- sequences

    def new_sequence(self, prompt: str | Seq[int], prefix: KVSlice | None = None) -> SeqState:
        """A sequence for `prompt`; with `prefix`, the K/V of its first `prefix.n` tokens is taken
        from the prefix cache instead of being computed again."""
        ids = self.encode(prompt) if isinstance(prompt, str) else list(prompt)
        if not ids:
            raise EngineError("the prompt is empty")
        self._check_room(len(ids), 1)
        seq = SeqState(kv=self.runner.new_kv(), serial=self.new_stream(SERIAL_TAG))
        self._live.add(seq)
        n = prefix.n if prefix is not None else 0
        if n >= len(ids):
            raise EngineError("a cached prefix must leave at least one prompt token to compute")
        if n:
            seq.load_prefix(prefix, ids[:n])
        seq.serial.push(ids[n:])
        return seq

    @staticmethod
    def cacheable_prefix(seq: SeqState) -> list[int]:
        """The tokens of the sequence's longest computed serial prefix (what a prefix cache may keep)."""
        n = 0
        for w in seq.written:
            if w.index != n or w.tag != SERIAL_TAG:
                break
            n += 1
        return [w.token for w in seq.written[:n]]

    def export_prefix(self, seq: SeqState, n: int) -> KVSlice:
        """The K/V of the sequence's first n tokens, for the prefix cache. They must be serial tokens
        already in the cache, in order (a prompt's tokens are)."""
        if n > len(self.cacheable_prefix(seq)):
            raise EngineError(f"the first {n} tokens are not a computed serial prefix")
        return seq.kv.export(n)

    def extend(self, seq: SeqState, text: str | Seq[int]) -> None:
        """Append serial text (fed lazily with the next forward)."""
        seq.check_serial()
        ids = self.encode(text) if isinstance(text, str) else list(text)
        self._check_room(seq.length + len(ids), 0)
        seq.serial.push(ids)

    def prefill(self, seq: SeqState, keep: int = 0, logits_from: int | None = None) -> torch.Tensor | None:
        """Feed pending serial text now (otherwise it rides along with the next forward), all but the
        last `keep` tokens. With `logits_from`, return the log-probabilities [rows, vocab] of the fed
        rows whose index in the text is >= logits_from (prompt log-probs)."""
        seq.check_open()
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

    def copy_sequence(self, seq: SeqState) -> SeqState:
        """An independent sequence with the same text and K/V: a server request forked off another's
        end. Its later tokens can be grafted back onto the original as a branch (`graft`)."""
        seq.check_serial()
        out = seq.copy(seq.kv.copy_into(self.runner.new_kv()), self.new_stream(SERIAL_TAG, seq.serial.history.copy()))
        self._live.add(out)
        return out

    def graft(self, dst: SeqState, branches: Seq[SeqState]) -> None:
        """The ASPD join across sequences. Each of `branches` holds dst's text plus its own serial
        tokens (forked off dst, or computed from the same prefix); their K/V past that point is
        appended to dst's cache as the branches of one block, with the positions and mask they have
        when decoded inside a block, and the block closes: dst goes on over all branches, no re-prefill."""
        if len(branches) < 1:
            raise EngineError("a join needs at least one branch")
        for x in (dst, *branches):
            x.check_serial()
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
        block = dst.new_block()
        for j, (b, tail) in enumerate(zip(branches, tails), start=1):
            if not tail:
                continue
            dst.append_branch(Tag(block, j), [w.token for w in tail], b.kv.gather([w.index for w in tail]))
            dst.serial.history.merge(b.serial.history)
        dst.close_block()

    def release(self, seq: SeqState) -> None:
        """Drop a sequence's K/V now (a finished or cancelled request)."""
        seq.release()
        self._live.discard(seq)

    @property
    def live_sequences(self) -> int:
        """Sequences still holding K/V (not released and still referenced): a leak check."""
        return sum(1 for x in self._live if x.kv is not None)

    def next_logits(self, seq: SeqState) -> torch.Tensor:
        """Float32 logits of the token after the sequence's current text (feeds what is pending)."""
        seq.check_open()
        if seq.open_branches or seq.block_open:
            raise EngineError("the sequence is inside a parallel block")
        return self._drive(self.serial_logits_steps(seq))

    def text(self, seq: SeqState) -> str:
        return self.decode(self.tokens(seq))

    @staticmethod
    def tokens(seq: SeqState) -> list[int]:
        """The sequence's token ids in written order (pending serial tokens included)."""
        return [w.token for w in seq.written] + seq.serial.pending

    def _check_room(self, total: int, extra: int) -> None:
        if total + extra > self.max_len:
            raise EngineError(f"the text would have {total} tokens; the model's context window is {self.max_len}")

    # ----------------------------------------------------------------- the forward step

    def _drive(self, steps: Steps[T], after: Callable[[], None] | None = None) -> T:
        """Run a step generator to the end, one forward at a time (batch of one), calling `after`
        once each step's tokens are taken. A serving loop drives many at once instead, with one
        `forward_many` per step."""
        try:
            fwd = next(steps)
            while True:
                fwd = steps.send(self.runner.forward_many([fwd])[0])
                if after is not None:
                    after()
        except StopIteration as done:
            return done.value

    def _feed(self, seq: SeqState, plan: Seq[Stream | object],
              rows_from: int | None = None) -> dict[Stream, torch.Tensor]:
        return self._drive(self.feed_steps(seq, plan, rows_from))

    def feed_steps(self, seq: SeqState, plan: Seq[Stream | object],
                   rows_from: int | None = None) -> Steps[dict[Stream, torch.Tensor]]:
        """One forward over every stream's pending tokens, in plan order; logits for those that want
        them (their last token), or, with `rows_from` and one stream, its rows from that index on."""
        feed = seq.take(plan)
        if not feed.tokens:
            return {}
        if feed.positions[-1] >= self.max_len:
            seq.close("the context window is full")
            raise EngineError(f"the sequence reached the model's context window ({self.max_len} tokens)")
        if rows_from is not None:
            rows = list(range(rows_from, len(feed.tokens)))
            logits = yield Forward(seq.kv, feed.tokens, feed.positions, feed.tags, rows)
            return {plan[0]: logits}
        logits = yield Forward(seq.kv, feed.tokens, feed.positions, feed.tags, feed.rows)
        return dict(zip(feed.owners, logits))

    def serial_logits_steps(self, seq: SeqState) -> Steps[torch.Tensor]:
        """Next-token logits of the serial stream (its last token is fed again if already cached)."""
        s = seq.serial
        seq.ensure_pending(s)
        s.want_logits = True
        return (yield from self.feed_steps(seq, [s]))[s]

    # ----------------------------------------------------------------- generate and fork

    def start(self, seq: SeqState, params: SamplingParams, mode: Mode = "aspd", logprobs: int | None = None) -> Run:
        """A generate call as a run the caller drives: `run.steps()` yields one `Forward` per step,
        takes its logits back and returns the output (the serving loop batches many runs' steps into
        one forward); `run.partial_text()` is its text so far. `logprobs=k` records each serial
        token's log-prob and its k best alternatives."""
        seq.check_serial()
        self._check_room(seq.length, 1)
        return Run(self, seq, RunKind(mode), params, logprobs=logprobs)

    def generate(self, seq: SeqState, params: SamplingParams, mode: Mode = "aspd",
                 on_step: Callable[[Run], None] | None = None) -> GenerationOutput:
        """Decode serially; in `aspd` mode the model may open parallel blocks, which run in parallel.
        `on_step(run)` after each step: `run.partial_text()`, `run.branch_progress()` (streaming)."""
        run = self.start(seq, params, mode)
        return self._drive(run.steps(), on_step and functools.partial(on_step, run))

    def fork(self, seq: SeqState, seeds: Seq[str], params: SamplingParams, markup: bool = False,
             linked: bool = False) -> GenerationOutput:
        """Explicit fork: decode one branch per seed in parallel over the shared prefix, then join.

        With `markup` the block is written in ASPD markup (the seeds are titles); without it the
        seeds are plain text and the join appends the branches in order (works on any base model).
        `linked`: the branches are parts of one answer, as in an ASPD block (no branch repeats an
        n-gram of its siblings'); else each is decoded as if alone.
        """
        return self._drive(self.fork_steps(seq, seeds, params, markup, linked))

    def fork_steps(self, seq: SeqState, seeds: Seq[str], params: SamplingParams,
                   markup: bool = False, linked: bool = False) -> Steps[GenerationOutput]:
        """`fork` as a step generator (checked now, decoded as it is driven): many forks share each
        forward when driven together (`run_kind.drive_all`)."""
        seq.check_serial()
        if len(seeds) < 2:
            raise EngineError("a fork needs at least 2 branches")
        if markup and any(not t.strip() for t in seeds):
            raise EngineError("branch titles must be non-empty")
        self._check_room(seq.length, 1)
        run = Run(self, seq, RunKind.FORK if markup else RunKind.PLAIN_FORK, params, linked=linked)
        if markup:
            seq.serial.push(self.encode(block_header(seeds)))
            run.open_block(list(seeds))
        else:
            run.open_block(list(seeds), seeds=[self.encode(s) for s in seeds])
        return run.steps()

    # ----------------------------------------------------------------- plain blocks, step by step
    # A program's parallel block: branches are opened, extended, decoded (any subset at once, each
    # with its own sampling) and scored, then joined; the same calls run it one branch at a time.

    def open_block(self, seq: SeqState) -> None:
        """Open a plain parallel block (no markup) on a sequence; branches are added with add_branch."""
        seq.check_serial()
        seq.open_plain_block()

    def add_branch(self, seq: SeqState, text: str | Seq[int] = ()) -> int:
        """A new branch of the open block, over the shared prefix; returns its index."""
        if not seq.block_open:
            raise EngineError("no parallel block is open")
        br = self.new_stream(Tag(seq.next_block - 1, len(seq.open_branches) + 1), seq.serial.history.copy())
        br.finish = FinishReason.IDLE
        j = seq.add_branch(br)
        self.branch_extend(seq, j, text)
        return j

    def branch_extend(self, seq: SeqState, branch: int, text: str | Seq[int]) -> None:
        ids = self.encode(text) if isinstance(text, str) else list(text)
        self._check_room(seq.length + len(ids), 0)
        self._branch(seq, branch).push(ids)

    def decode_branches(self, seq: SeqState, requests: dict[int, SamplingParams],
                        on_step: Callable[[Run], None] | None = None) -> GenerationOutput:
        """Decode the given branches together (one forward per step) until each stops; each
        request's `max_new_tokens` caps its branch. Other branches' pending text rides along."""
        if not requests:
            raise EngineError("nothing to decode")
        for j in requests:
            seq.ensure_pending(self._branch(seq, j))
        run = Run.branches(self, seq, requests)
        return self._drive(run.steps(), on_step and functools.partial(on_step, run))

    def join(self, seq: SeqState, reprefill: bool = False, order: Seq[int] | None = None,
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
            brs = seq.reorder_branches(order)
        if reprefill or discard:
            joined = seq.discard_block()
            if reprefill:
                seq.serial.push(joined)
        else:
            for b in brs:
                b.want_logits = False
            if seq.serial.pending or any(b.pending for b in brs):
                self._feed(seq, self._in_block(seq, [*brs, CLOSE_BLOCK]))
            else:
                seq.close_block()
        if not discard:
            for b in brs:
                seq.serial.history.merge(b.history)
        seq.end_block()

    @staticmethod
    def _in_block(seq: SeqState, plan: list) -> list:
        """A feed plan inside a block: serial text still pending (the prefix) goes first."""
        seq.serial.want_logits = False
        return ([seq.serial] if seq.serial.pending else []) + plan

    def _branch(self, seq: SeqState, branch: int) -> Stream:
        seq.check_open()
        if not seq.block_open or not 0 <= branch < len(seq.open_branches):
            raise EngineError(f"no open branch {branch}")
        return seq.open_branches[branch]

    # ----------------------------------------------------------------- scoring (select)

    def score(self, seq: SeqState, continuations: Seq[str], branch: int | None = None) -> list[list[float]]:
        """Per-token log-probabilities of each continuation after the sequence's text (or after a
        branch of its open block). The cache is left as it was: the probes are fed, then hidden."""
        ids = [self.encode(c) for c in continuations]
        if not ids or any(not x for x in ids):
            raise EngineError("every choice must be non-empty text")
        if branch is None:
            if seq.open_branches or seq.block_open:
                raise EngineError("the sequence is inside a parallel block")
            first = torch.log_softmax(self._drive(self.serial_logits_steps(seq)), -1)
            # All choices in one forward, as the branches of a throwaway block over the prefix.
            block, base = seq.new_block(), seq.positions.next_serial
            probes = [(Tag(block, i + 1), list(range(base, base + len(x) - 1)), x[:-1]) for i, x in enumerate(ids)]
            rows = probe(self.runner, seq, probes)
            return [token_logprobs(first, r, x) for r, x in zip(rows, ids)]
        b = self._branch(seq, branch)
        seq.ensure_pending(b)
        b.want_logits = True
        first = torch.log_softmax(self._feed(seq, self._in_block(seq, [b]))[b], -1)
        out = []
        for x in ids:  # one probe per choice: same-branch probes would see each other
            start = seq.positions.peek(b.tag)
            rows = probe(self.runner, seq, [(b.tag, list(range(start, start + len(x) - 1)), x[:-1])])
            out.append(token_logprobs(first, rows[0], x))
        return out
