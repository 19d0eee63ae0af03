"""The ASPD token protocol, defined once for inference and training.

A response is serial text with zero or more parallel blocks (never nested):

    serial <|title|>T1<|/title|> <|title|>T2<|/title|> <|para|>
           <|branch|>T1: body1<|/branch|> <|branch|>T2: body2<|/branch|> <|/para|> serial ...

Everything here is pure Python: the grammar (parse/render), the attention rule and
position ids for sequences that contain blocks (the decoding constraint is `constraint.py`).
The model runner and the training collator both call these functions; nothing else
redefines them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .errors import UserError

TITLE, END_TITLE = "<|title|>", "<|/title|>"
PARA, BRANCH, END_BRANCH, END_PARA = "<|para|>", "<|branch|>", "<|/branch|>", "<|/para|>"
SPECIAL_TOKENS: tuple[str, ...] = (TITLE, END_TITLE, PARA, BRANCH, END_BRANCH, END_PARA)
TITLE_SEP = ":"  # a branch opens with "<|branch|>" + title + ":"; its body follows (usually " ...").
# A title is one plain line: the model may not write these in one (training titles never hold them),
# or titles run on into the item's body and drift between numbering and emphasis styles. The separator
# is one of them: a title holding it ("3. Use Tools: 7. Use Tools") has run into a body.
TITLE_BANNED_CHARS = "\n*_`#[]" + TITLE_SEP


class ProtocolError(UserError, ValueError):
    """Malformed ASPD markup."""


# --------------------------------------------------------------------------- structure


class SerialSegment(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: Literal["serial"] = "serial"
    text: str


class Branch(BaseModel):
    """One branch: `body` is the exact text after "title:" (normally starting with one space)."""

    model_config = ConfigDict(frozen=True)
    title: str
    body: str

    @property
    def text(self) -> str:
        """The branch as it reads in the answer: the body without the one space that follows "title:"."""
        return self.body.removeprefix(" ")


class ParallelBlock(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: Literal["parallel"] = "parallel"
    branches: tuple[Branch, ...]

    @property
    def titles(self) -> tuple[str, ...]:
        return tuple(b.title for b in self.branches)


Segment = SerialSegment | ParallelBlock


class Response(BaseModel):
    """A response as serial segments and parallel blocks, in order."""

    model_config = ConfigDict(frozen=True)
    segments: tuple[Segment, ...]

    def plain_text(self) -> str:
        """Markup removed: serial text and branch bodies, branches in order. Lossless for training
        answers (their branch bodies restate their items' leads), so the data pipeline checks it."""
        return "".join(s.text if isinstance(s, SerialSegment) else "".join(b.text for b in s.branches)
                       for s in self.segments)

    def answer_text(self) -> str:
        """The answer as a reader gets it (engine output, server, DSL variables): `plain_text`, but a
        branch whose text does not open with its title is led by "title: " (the model wrote it after
        that seed), and each branch ends a line, so a block never reads as run-on text. Training answers,
        whose branches restate their items' leads, read exactly as `plain_text`."""
        return "".join(text for _, text in self.answer_pieces())

    def answer_pieces(self) -> list[tuple[str, str]]:
        """`answer_text` as (kind, text) pieces in order: "serial" text, "branch" text, and what the
        answer adds around branches, a "lead" ("title: ") or a line "break"."""
        out: list[tuple[str, str]] = []
        ends_line = False

        def add(kind: str, text: str) -> None:
            nonlocal ends_line
            if text:
                out.append((kind, text))
                ends_line = text.endswith("\n")
        for seg, after in zip(self.segments, [*self.segments[1:], None]):
            if isinstance(seg, SerialSegment):
                add("serial", seg.text)
                continue
            brk = _line_break(seg)
            for b in seg.branches:
                if out and not ends_line:
                    add("break", brk)
                if not _opens_with(b.text, b.title):
                    add("lead", f"{b.title}{TITLE_SEP} ")
                add("branch", b.text)
            # text after the block starts a line of its own, unless it begins one itself ("\n\nIn
            # short, ..."; a line break more would be an empty line the answer never wrote); a next
            # block's first branch breaks the line itself, and the answer's end needs none
            if not ends_line and isinstance(after, SerialSegment) and not after.text.startswith("\n"):
                add("break", brk)
        return out

    def markup(self) -> str:
        return "".join(render_segment(s) for s in self.segments)

    @property
    def blocks(self) -> list[ParallelBlock]:
        return [s for s in self.segments if isinstance(s, ParallelBlock)]


def _line_break(block: ParallelBlock) -> str:
    """The break after a branch that ends mid-line: the block's own spacing, an empty line where every
    branch that ends its line ends it with one (a list of paragraphs), else a newline (v13's Vicuna
    answers read "...development.\n6. **Amino Acids**" amid "\n\n"-spaced items otherwise)."""
    ends = [b.text for b in block.branches if b.text.endswith("\n")]
    return "\n\n" if ends and all(t.endswith("\n\n") for t in ends) else "\n"


def _opens_with(text: str, title: str) -> bool:
    """Whether a branch's text restates its title first: it opens with the title's item number
    ("5. **Fiscal rules**: ..." under "5. Fiscal and Tax": the model wrote the item's own header), or
    their first two words of letters agree by their first four letters ("2. **Staying fit**: ..."
    opens with "Stay fit"; "Fit: ..." not)."""
    num = re.match(r"\d+[.)]", title)
    if num and re.match(r"[\s*#]*" + re.escape(num.group()) + r"\s", text):
        return True
    head = re.findall(r"[^\W\d_]+", title.lower())[:2]
    words = re.findall(r"[^\W\d_]+", text[:4 * len(title) + 16].lower())[:len(head)]
    return len(words) == len(head) and all(a == b or (len(a) >= 4 and a[:4] == b[:4]) for a, b in zip(head, words))


def branch_seed(title: str) -> str:
    """The text that opens a branch. The engine feeds exactly this; training tokenises it the same way."""
    return f"{BRANCH}{title}{TITLE_SEP}"


def block_header(titles: Sequence[str]) -> str:
    return "".join(f"{TITLE}{t}{END_TITLE}" for t in titles) + PARA


def render_segment(seg: Segment) -> str:
    if isinstance(seg, SerialSegment):
        return seg.text
    branches = "".join(f"{branch_seed(b.title)}{b.body}{END_BRANCH}" for b in seg.branches)
    return block_header(seg.titles) + branches + END_PARA


def parse(text: str) -> Response:
    """Parse complete markup text into a Response; raise ProtocolError on any violation."""
    segments: list[Segment] = []
    pos = 0
    while pos < len(text):
        start = text.find(TITLE, pos)
        _reject_stray(text[pos: len(text) if start < 0 else start], "serial text")
        if start < 0:
            segments.append(SerialSegment(text=text[pos:]))
            break
        if start > pos:
            segments.append(SerialSegment(text=text[pos:start]))
        block, pos = _parse_block(text, start)
        segments.append(block)
    return Response(segments=tuple(segments))


def _reject_stray(chunk: str, where: str) -> None:
    for tok in SPECIAL_TOKENS:
        if tok in chunk:
            raise ProtocolError(f"unexpected {tok} in {where}: {chunk[:80]!r}")


def _parse_block(text: str, pos: int) -> tuple[ParallelBlock, int]:
    titles: list[str] = []
    while text.startswith(TITLE, pos):
        end = text.find(END_TITLE, pos)
        if end < 0:
            raise ProtocolError("unclosed <|title|>")
        title = text[pos + len(TITLE): end]
        _reject_stray(title, "a title")
        if not title.strip():
            raise ProtocolError("empty title")
        titles.append(title)
        pos = end + len(END_TITLE)
    if not text.startswith(PARA, pos):
        raise ProtocolError(f"expected {PARA} after titles at offset {pos}")
    if len(titles) < 2:
        raise ProtocolError(f"a parallel block needs at least 2 titles, got {len(titles)}")
    pos += len(PARA)
    branches = []
    for title in titles:
        seed = branch_seed(title)
        if not text.startswith(seed, pos):
            raise ProtocolError(f"expected {seed!r} at offset {pos}")
        end = text.find(END_BRANCH, pos)
        if end < 0:
            raise ProtocolError(f"unclosed branch {title!r}")
        body = text[pos + len(seed): end]
        _reject_stray(body, f"branch {title!r}")
        branches.append(Branch(title=title, body=body))
        pos = end + len(END_BRANCH)
    if not text.startswith(END_PARA, pos):
        raise ProtocolError(f"expected {END_PARA} after the last branch at offset {pos}")
    return ParallelBlock(branches=tuple(branches)), pos + len(END_PARA)


# --------------------------------------------------------------------------- layout

SERIAL, DEAD = 0, -1


@dataclass(frozen=True, slots=True)
class Tag:
    """Where a token sits: block 0 is the serial stream; a branch token has block >= 1 and branch >= 1.

    `block == DEAD` marks a cached token that nobody may attend to any more (e.g. a stop string cut
    off a branch), so the cache never needs compaction.
    """

    block: int = SERIAL
    branch: int = 0


SERIAL_TAG = Tag()


def visible(q_idx, q_block, q_branch, k_idx, k_block, k_branch):
    """The attention rule, for scalars or broadcasting arrays (numpy or torch).

    A query sees an earlier-or-equal key unless the key is dead, or both sit in different branches
    of the same block (siblings never see each other). Serial tokens after a block see every branch.
    """
    sibling = (q_block == k_block) & (q_block > 0) & (q_branch != k_branch)
    return (k_idx <= q_idx) & (k_block != DEAD) & (sibling ^ True)  # `^ True`, not `~`: Python bools too


@dataclass(slots=True)
class PositionCounter:
    """Position ids: branches of a block all start right after <|para|>; after the block positions
    continue as if the branches had been written one after another."""

    next_serial: int = 0
    _base: int = 0
    _lengths: dict[int, int] = field(default_factory=dict)

    def take(self, tag: Tag) -> int:
        if tag.block == SERIAL:
            p = self.next_serial
            self.next_serial += 1
            return p
        if not self._lengths:  # first branch token of a block
            self._base = self.next_serial
        n = self._lengths.get(tag.branch, 0)
        self._lengths[tag.branch] = n + 1
        return self._base + n

    def peek(self, tag: Tag) -> int:
        """The position `take(tag)` would return next, without taking it."""
        if tag.block == SERIAL:
            return self.next_serial
        base = self._base if self._lengths else self.next_serial
        return base + self._lengths.get(tag.branch, 0)

    def drop(self, tag: Tag, n: int) -> None:
        """Forget the last n tokens of a branch (they were marked dead)."""
        self._lengths[tag.branch] -= n

    def abort_block(self) -> None:
        """Forget an open block entirely (its tokens were marked dead): serial positions go on from before it."""
        self._lengths = {}

    def close_block(self) -> None:
        self.next_serial = self._base + sum(self._lengths.values()) if self._lengths else self.next_serial
        self._lengths = {}


def layout(tags: Sequence[Tag], start: int = 0) -> list[int]:
    """Position ids for a sequence written in training order (branch after branch)."""
    counter = PositionCounter(next_serial=start)
    out, block = [], SERIAL
    for tag in tags:
        if tag.block == DEAD:
            raise ProtocolError("dead tokens exist only in an engine's cache, not in a written sequence")
        if tag.block != block and block > 0:  # left a block
            counter.close_block()
        block = tag.block
        out.append(counter.take(tag))
    return out


def mask(tags: Sequence[Tag]) -> list[list[bool]]:
    """Dense boolean mask [query][key] for a sequence in training order (reference for tests)."""
    n = len(tags)
    return [[bool(visible(i, tags[i].block, tags[i].branch, j, tags[j].block, tags[j].branch))
             for j in range(n)] for i in range(n)]


# --------------------------------------------------------------------------- tokenised markup


@dataclass(frozen=True)
class SpecialIds:
    """Token ids of the six markup tokens and the model's end-of-sequence ids."""

    title: int
    end_title: int
    para: int
    branch: int
    end_branch: int
    end_para: int
    eos: frozenset[int]
    not_in_title: frozenset[int] = frozenset()  # tokens holding a TITLE_BANNED_CHARS character
    fence: frozenset[int] = frozenset()  # tokens holding "```": no block opens inside fenced code
    line_end: frozenset[int] | None = None  # tokens ending in a newline: a block opens only after one (None: anywhere)
    template: frozenset[int] = frozenset()  # the tokenizer's own special tokens (chat-template role markers)
    space: int | None = None  # the token of one space, when a body's separator from its title is one (`Branch.text`)

    @property
    def markup(self) -> frozenset[int]:
        return frozenset((self.title, self.end_title, self.para, self.branch, self.end_branch, self.end_para))


def tokenize_response(resp: Response, encode, ids: SpecialIds, first_block: int = 1) -> tuple[list[int], list[Tag]]:
    """Token ids and tags for a structured response, piece by piece exactly as the engine feeds it.

    `encode(text) -> list[int]` must not add BOS/EOS. Training uses this to build its inputs; the
    engine feeds the same pieces (branch_seed, then the sampled body, then <|/branch|>).
    """
    toks: list[int] = []
    tags: list[Tag] = []
    block = first_block - 1

    def put(piece: list[int], tag: Tag) -> None:
        toks.extend(piece)
        tags.extend([tag] * len(piece))

    for seg in resp.segments:
        if isinstance(seg, SerialSegment):
            put(encode(seg.text), SERIAL_TAG)
            continue
        block += 1
        for t in seg.titles:
            put([ids.title] + encode(t) + [ids.end_title], SERIAL_TAG)
        put([ids.para], SERIAL_TAG)
        for j, br in enumerate(seg.branches, start=1):
            tag = Tag(block, j)
            put(encode(branch_seed(br.title)) + encode(br.body) + [ids.end_branch], tag)
        put([ids.end_para], SERIAL_TAG)
    return toks, tags
