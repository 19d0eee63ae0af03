"""Find the parallel groups in an answer and rewrite it, losslessly, in the ASPD markup.

Candidates: numbered and bulleted lists (items at the list's own indentation; nested lists stay
inside their item), bold-title paragraphs, heading sections, and runs of plain paragraphs (this
model mostly writes essays whose middle paragraphs each make one point). Fenced code is never
split. A group needs `MIN_BRANCHES` to `MAX_BRANCHES` items (a longer list becomes consecutive
groups), short unique titles (at most `MAX_TITLE_WORDS` words, from the item's bold lead, heading or
first words), and bodies longer than their titles. `rewrite(...).plain_text()` is exactly the original answer.
`thin()` names the groups not worth a fork (bare titles, or titles that restate each other): the
dataset drops their answers rather than teach the model to write them, or to leave a list serial.
`tidy()` repairs the one markdown slip the steered opening causes ("**1. **Title**:").

Item numbers: a branch cannot see its siblings, so a numbered item's title carries its number
("3. Exercise"); the model writes all titles serially (it knows the count there) and each branch
copies its number from its own title.

Pure Python.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runtime.anti_loop import alike_titles
from runtime.protocol import TITLE_BANNED_CHARS, Branch, ParallelBlock, Response, SerialSegment

MIN_BRANCHES = 3  # a pair is rarely worth a fork: titles and a join for one saved branch
MAX_BRANCHES = 6  # more share the token budget so thinly that every branch is cut mid-sentence
MAX_TITLE_CHARS = 40
MAX_TITLE_WORDS = 6
MIN_PARAGRAPHS = 3  # a run of plain paragraphs: at least this many, each at least MIN_PARAGRAPH_CHARS
MIN_PARAGRAPH_CHARS = 80
MIN_ITEM_WORDS = 8  # a list of bare titles ("1. **Baking a Candle**") is not worth a fork
# A run of paragraphs opening "I am", "We will", "Your ...": a letter's, an email's or a speaker's, each
# following the last; titled by their first words they taught v9 to fork a letter ("I am", "I have",
# "I'm": Vicuna q73). Two such openings keep the run serial.
_PERSONAL = re.compile(r"^(?:I|I'm|I've|I'll|I'd|We|We're|We've|We'll|You|You're|You've|Your|My|Our|Dear)\b")
_NUM = re.compile(r"^(\d{1,2})[.)]\s+")
_BULLET = re.compile(r"^[-*•]\s+")
_HEAD = re.compile(r"^(#{1,4})\s+(.+)$")
_BOLD = re.compile(r"^\*\*(.+?)\*\*")
_FENCE = re.compile(r"^\s*```")
_CONCLUSION = re.compile(r"^(in conclusion|overall|in summary|to sum up|ultimately|in short|to conclude)\b", re.I)


@dataclass(frozen=True)
class Group:
    kind: str  # "numbered" | "bulleted" | "bold" | "heading" | "paragraphs"
    start: int  # character span of the block in the answer
    end: int
    items: tuple[tuple[int, int], ...]  # each branch's span (a branch's text ends with its separator)
    titles: tuple[str, ...]


@dataclass(frozen=True)
class _Line:
    start: int
    end: int  # after the newline
    text: str  # without the newline

    @property
    def indent(self) -> int:
        return len(self.text) - len(self.text.lstrip(" \t"))

    @property
    def blank(self) -> bool:
        return not self.text.strip()


def _lines(text: str) -> list[_Line]:
    out, pos = [], 0
    for raw in text.splitlines(keepends=True):
        out.append(_Line(pos, pos + len(raw), raw.rstrip("\r\n")))
        pos += len(raw)
    return out


def _code_lines(lines: list[_Line]) -> set[int]:
    inside, out = False, set()
    for i, ln in enumerate(lines):
        if _FENCE.match(ln.text):
            out.add(i)
            inside = not inside
        elif inside:
            out.add(i)
    if inside:  # an unclosed fence: everything after it is code
        out |= set(range(len(lines)))
    return out


# ----------------------------------------------------------------- titles


def _clean(s: str) -> str:
    s = re.sub(f"[{re.escape(TITLE_BANNED_CHARS)}]", "", re.sub(r"\s+", " ", s))
    return re.sub(r"\s+", " ", s).strip(" :.-,;")


def _title_from(item: str, kind: str) -> str:
    body = item.strip()
    num = _NUM.match(body)
    body = _NUM.sub("", _BULLET.sub("", body), count=1)
    head = _HEAD.match(body)
    if head:
        base = head.group(2)
    elif (bold := _BOLD.match(body)) is not None:
        base = bold.group(1)
    else:
        first = re.split(r"[.:;!?\n]", body, maxsplit=1)[0]
        base = " ".join(first.split()[:4])
    base = " ".join(_clean(base).split()[:MAX_TITLE_WORDS])
    if len(base) > MAX_TITLE_CHARS:
        base = base[:MAX_TITLE_CHARS].rsplit(" ", 1)[0]
    return f"{num.group(1)}. {base}" if num and kind == "numbered" else base


def _titles(texts: list[str], kind: str) -> tuple[str, ...] | None:
    titles = [_title_from(t, kind) for t in texts]
    if any(not t for t in titles) or len(set(titles)) != len(titles):
        return None
    if any(len(t) + 1 >= len(x.strip()) for t, x in zip(titles, texts)):  # a body longer than its title
        return None
    return tuple(titles)


# ----------------------------------------------------------------- candidates


def _list_groups(text: str, lines: list[_Line], code: set[int]) -> list[Group]:
    groups, i = [], 0
    while i < len(lines):
        kind = _marker(lines[i])
        if kind is None or i in code:
            i += 1
            continue
        indent = lines[i].indent
        starts, j, last_content = [i], i + 1, i
        while j < len(lines):
            ln = lines[j]
            if j in code:
                break
            if ln.blank:
                j += 1
                continue
            if ln.indent == indent and _marker(ln) == kind:
                starts.append(j)
            elif ln.indent <= indent and _marker(ln) is None and lines[j - 1].blank:
                break  # a new paragraph at the list's level: the list is over
            elif ln.indent < indent:
                break
            last_content = j
            j += 1
        if len(starts) >= MIN_BRANCHES:
            spans = [(lines[a].start, lines[b].start) for a, b in zip(starts, starts[1:])]
            end = lines[last_content].start + len(lines[last_content].text)
            spans.append((lines[starts[-1]].start, end))
            groups += _groups(text, kind, spans)
        i = max(j, i + 1)
    return groups


def _marker(ln: _Line) -> str | None:
    s = ln.text.lstrip(" \t")
    if _NUM.match(s):
        return "numbered"
    if _BULLET.match(s) and not s.startswith("**"):
        return "bulleted"
    return None


def _paragraphs(text: str, lines: list[_Line], code: set[int]) -> list[tuple[int, int, str]]:
    """(start, end of content, kind) per blank-line-separated paragraph; kind 'plain', 'bold',
    'h1'..'h4' (a heading with its body) or 'other' (lists, code, a bare heading: never a branch)."""
    out, cur = [], []
    for i, ln in enumerate(lines + [_Line(len(text), len(text), "")]):
        if ln.blank or i == len(lines):
            if cur:
                a, b = lines[cur[0]], lines[cur[-1]]
                first = a.text.lstrip()
                if any(k in code for k in cur) or any(_marker(lines[k]) for k in cur):
                    kind = "other"
                elif (h := _HEAD.match(first)) is not None:
                    kind = f"h{len(h.group(1))}" if len(cur) > 1 else "other"  # a section: heading + body
                elif _BOLD.match(first):
                    kind = "bold"
                else:
                    kind = "plain"
                out.append((a.start, b.start + len(b.text), kind))
            cur = []
        else:
            cur.append(i)
    return out


def _paragraph_groups(text: str, paras: list[tuple[int, int, str]], taken: list[tuple[int, int]]) -> list[Group]:
    groups = []
    for kind in ("bold", "h1", "h2", "h3", "h4", "plain"):
        run: list[tuple[int, int]] = []
        for idx, (a, b, k) in enumerate(paras + [(len(text), len(text), "end")]):
            usable = k == kind and not any(a < e and s < b for s, e in taken)
            if kind == "plain" and usable:
                # the first paragraph introduces, a concluding one sums up: both stay serial; short
                # paragraphs (a worked calculation, a greeting) are steps, not points
                usable = (idx > 0 and not _CONCLUSION.match(text[a:b].lstrip())
                          and b - a >= MIN_PARAGRAPH_CHARS)
            if usable:
                run.append((a, b))
                continue
            if len(run) >= (MIN_PARAGRAPHS if kind == "plain" else MIN_BRANCHES):
                spans = [(s, n) for (s, _), (n, _) in zip(run, run[1:])] + [run[-1]]
                name = {"plain": "paragraphs", "bold": "bold"}.get(kind, "heading")
                for g in _groups(text, name, spans):
                    groups.append(g)
                    taken.append((g.start, g.end))
            run = []
    return groups


def _groups(text: str, kind: str, spans: list[tuple[int, int]]) -> list[Group]:
    """The items as one group, or, past MAX_BRANCHES items, as consecutive groups of near-equal
    size: each but the last gives its final newline back to the serial text, because a block may
    not open right after a join."""
    titles = _titles([text[a:b] for a, b in spans], kind)
    if titles is None or (kind == "paragraphs" and sum(bool(_PERSONAL.match(t)) for t in titles) >= 2):
        return []
    parts = -(-len(spans) // MAX_BRANCHES)
    size = -(-len(spans) // parts)
    out = []
    for k in range(0, len(spans), size):
        chunk, names = list(spans[k:k + size]), titles[k:k + size]
        if k + size < len(spans):
            a, b = chunk[-1]
            if not text[a:b].endswith("\n") or len(chunk) < MIN_BRANCHES:
                return []
            chunk[-1] = (a, b - 1)
        out.append(Group(kind, chunk[0][0], chunk[-1][1], tuple(chunk), names))
    return out if all(len(g.items) >= MIN_BRANCHES for g in out) else []


def find_groups(text: str) -> list[Group]:
    """Non-overlapping candidate groups, in text order."""
    lines = _lines(text)
    code = _code_lines(lines)
    groups = _list_groups(text, lines, code)
    taken = [(g.start, g.end) for g in groups]
    groups += _paragraph_groups(text, _paragraphs(text, lines, code), taken)
    return sorted(groups, key=lambda g: g.start)


def rewrite(text: str, groups: list[Group]) -> Response:
    """The answer as serial segments and parallel blocks; its plain text is `text` exactly."""
    segs: list = []
    pos = 0
    for g in sorted(groups, key=lambda g: g.start):
        if g.start > pos:
            segs.append(SerialSegment(text=text[pos:g.start]))
        segs.append(ParallelBlock(branches=tuple(Branch(title=t, body=" " + text[a:b])
                                                 for t, (a, b) in zip(g.titles, g.items))))
        pos = g.end
    if pos < len(text):
        segs.append(SerialSegment(text=text[pos:]))
    resp = Response(segments=tuple(segs))
    if resp.plain_text() != text:  # a bug, never a data problem
        raise AssertionError("the rewrite is not lossless")
    return resp


# ----------------------------------------------------------------- filters


def loops(text: str) -> bool:
    """A repetition loop: a sentence (of some length) written three times or more, or a third of
    the sentences repeated."""
    sents = [re.sub(r"\W+", " ", s).strip().lower() for s in re.split(r"(?<=[.!?])\s+|\n+", text)]
    sents = [s for s in sents if len(s) >= 20]
    if not sents:
        return False
    counts: dict[str, int] = {}
    for s in sents:
        counts[s] = counts.get(s, 0) + 1
    return max(counts.values()) >= 3 or sum(c - 1 for c in counts.values()) / len(sents) > 0.3


def thin(text: str, g: Group) -> str | None:
    """Why a group is not worth forking (its answer is a poor training example), or None."""
    if any(len(text[a:b].split()) < MIN_ITEM_WORDS for a, b in g.items):
        return "bare_titles"
    if any(alike_titles(g.titles[:k + 1]) for k in range(1, len(g.titles))):
        return "alike_titles"
    return None


def tidy(text: str) -> str:
    """Move a bold mark that opens before an item's number after it: "**1. **Title**:" (an artefact
    of the steered opening "1. **") becomes the well-formed "1. **Title**:"."""
    return re.sub(r"(?m)^\*\*(\d{1,2}[.)]) \*\*(?=\S)", r"\1 **", text)


def trim_to_line(text: str) -> str:
    """An answer cut by the token cap, trimmed to its last complete line ('' if none): a list keeps
    its complete items (they are often one line each, with no blank line between them)."""
    cut = text.rfind("\n")
    return text[:cut].rstrip() if cut > 0 else ""
