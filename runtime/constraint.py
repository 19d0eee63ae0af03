"""The decoding constraint: the state machine over the protocol's markup that makes a malformed
block impossible, where a block may open (after a newline of the answer), and how large it may grow
within the answer's token budget. Pure Python, as the protocol it enforces (`protocol.py`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import SpecialIds

# What a branch needs of the answer's token budget (its title and a sentence of body): the model may
# open a block, or add a title to one, only while each of its branches can still have this much.
# Without it a block opened near the end of the budget has branches cut after a token or two.
MIN_BRANCH_TOKENS = 32


def opens_line(tokens: Sequence[int], ids: SpecialIds) -> bool:
    """Does text written after `tokens` start a line where a block may open? It does after any
    newline, the chat template's header line ("<|im_start|>assistant\n") included: a parallel
    training answer opens with its block, so the fork decision is the answer's first token."""
    return ids.line_end is not None and bool(tokens) and tokens[-1] in ids.line_end


def answer_start(tokens: Sequence[int], ids: SpecialIds) -> bool:
    """Do `tokens` end with a chat template's header line, so that what follows is an answer?"""
    return _last_line(tokens, ids) == "header"


def _last_line(tokens: Sequence[int], ids: SpecialIds) -> str | None:
    """What the newline ending `tokens` ends: "header" (a line with a template token), "text", or None
    (no newline at the end, or no line ends known)."""
    if ids.line_end is None or not tokens or tokens[-1] not in ids.line_end:
        return None
    for t in reversed(tokens[:-1]):
        if t in ids.line_end:
            return "text"
        if t in ids.template:
            return "header"
    return "text"


class Phase(enum.Enum):
    SERIAL = "serial"
    AFTER_JOIN = "after_join"  # the token right after <|/para|>: no new block yet
    TITLE = "title"  # inside <|title|> ... <|/title|>
    TITLES_CLOSED = "titles_closed"  # after <|/title|>: another title or <|para|>
    BRANCH = "branch"  # inside a branch body


@dataclass(frozen=True)
class Allowed:
    """Outcome of the constraint for one step: either `only` these ids, or everything but `banned`."""

    only: frozenset[int] | None = None
    banned: frozenset[int] = frozenset()
    bias: tuple[tuple[int, float], ...] = ()  # (token, logit offset) pairs, applied before `only`/`banned`
    anti_loop: bool = True  # False while a title is written: titles are never penalised


@dataclass
class Constraint:
    """The decoding state machine that makes malformed markup impossible.

    `adaptive=False` is the AR baseline: no markup token can ever be sampled.
    """

    ids: SpecialIds
    adaptive: bool = True
    max_title_tokens: int = 16
    max_branches: int = 8
    fork_bias: float = 0.0  # logit offset for opening a block: the adapter's calibrated fork threshold
    phase: Phase = Phase.SERIAL
    title_tokens: int = 0
    titles: int = 0
    in_code: bool = False  # inside a fenced code block of the serial text (training never splits code)
    # Right after a newline of the text (`opens_line`): every block of the training data opens there,
    # after the answer's first line at the earliest. A block opened mid-sentence lists the sentence's
    # next words as titles ("I am", "I'm", "I've"); one opened as a chat answer's first token lists
    # guesses at its opening line ("def longest(lst, n)", "def longest(lst, m)").
    line_start: bool = False
    # A chat answer's offset until its first line ends (None: `fork_bias` throughout; `intro_first`): with
    # the gate's offset at its first token v13 opened 32 of its 47 forked Vicuna answers with their block,
    # whose "1." the base model seldom writes first (training.md); 91% of the training answers open with
    # the base model's own first line.
    opening_cap: float | None = None

    def allowed(self, branch_tokens: int = 0, branch_cap: int | None = None, tokens_left: int | None = None) -> Allowed:
        """`tokens_left`: the answer's remaining budget, for a block's size (None: unbounded)."""
        ids = self.ids

        def room(branches: int) -> bool:
            return tokens_left is None or tokens_left >= branches * MIN_BRANCH_TOKENS
        markup = ids.markup
        if self.phase is Phase.BRANCH:
            if branch_cap is not None and branch_tokens >= branch_cap:
                return Allowed(only=frozenset({ids.end_branch}))
            return Allowed(banned=markup - {ids.end_branch})
        if self.phase is Phase.TITLE:
            if self.title_tokens >= self.max_title_tokens:
                return Allowed(only=frozenset({ids.end_title}))
            closing = {ids.end_title} if self.title_tokens > 0 else set()
            return Allowed(banned=(markup - closing) | ids.eos | ids.not_in_title, anti_loop=False)
        if self.phase is Phase.TITLES_CLOSED:
            opts = set()
            if self.titles < self.max_branches and (self.titles < 2 or room(self.titles + 1)):
                opts.add(ids.title)
            if self.titles >= 2:
                opts.add(ids.para)
            return Allowed(only=frozenset(opts))
        if (self.adaptive and self.phase is Phase.SERIAL and room(2) and not self.in_code
                and (self.line_start or ids.line_end is None)):
            offset = self.fork_bias if self.opening_cap is None else min(self.fork_bias, self.opening_cap)
            bias = ((ids.title, offset),) if offset else ()
            return Allowed(banned=markup - {ids.title}, bias=bias)
        return Allowed(banned=markup)

    def map_sampled(self, token: int) -> int:
        """EOS inside a branch means <|/branch|>."""
        if self.phase is Phase.BRANCH and token in self.ids.eos:
            return self.ids.end_branch
        return token

    def advance(self, token: int) -> None:
        """Move the state machine over a serial token (branch tokens never change it except closing)."""
        ids = self.ids
        if self.phase in (Phase.SERIAL, Phase.AFTER_JOIN):
            self.in_code ^= token in ids.fence
            self.line_start = opens_line((token,), ids)
            if self.line_start:  # the answer's first line ended: the full offset from here on
                self.opening_cap = None
        if self.phase is Phase.TITLE:
            if token == ids.end_title:
                self.phase, self.titles = Phase.TITLES_CLOSED, self.titles + 1
            else:
                self.title_tokens += 1
        elif self.phase is Phase.TITLES_CLOSED:
            if token == ids.title:
                self.phase, self.title_tokens = Phase.TITLE, 0
            elif token == ids.para:
                self.phase = Phase.BRANCH
        elif token == ids.title:
            self.phase, self.title_tokens, self.titles = Phase.TITLE, 0, 0
        elif token == ids.end_para:
            self.phase = Phase.AFTER_JOIN
        elif self.phase is Phase.AFTER_JOIN:
            self.phase = Phase.SERIAL

    def join(self) -> None:
        self.advance(self.ids.end_para)
