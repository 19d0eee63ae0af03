"""Anti-loop decoding, defined once: a repetition penalty on words and n-gram blocking.

A small model decoded greedily loops; the classic cure (a repetition penalty on every earlier
token, prompt included) also penalises spaces, digits, newlines, `**` and list numbers, and the
text drifts into run-on words while lists lose their numbering. So:

- the history is what the model wrote in this answer (the prompt and text fed by a program are
  not in it, nor markup, nor titles: a branch must be free to repeat its own title); the branches
  of an adaptive answer's block are parts of that one answer, so each also sees what its siblings
  wrote so far (`link`): no n-gram twice in the answer, as when it is decoded serially;
- `repetition_penalty` applies only to *word* tokens (a letter in them) already in the history;
- `no_repeat_ngram_size` n: a token that would repeat an n-gram of the history is banned;
- a token that would leave a broken character (a lone byte of a byte-level tokenizer, the n-gram
  rule's favourite escape) is banned (`utf8.py`);
- nothing of the above applies while a title is written; instead no title may repeat an earlier
  title of the answer (`title_bans`).

The engine's sampler (`History`, `apply`) and the transformers baseline (`AntiLoopProcessor`)
run this same code, so every system compared decodes under the same rule.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
from difflib import SequenceMatcher

import torch
from transformers import LogitsProcessor

from .utf8 import Utf8Table
from .vocab import token_texts

_START = -1  # stands for a title's start in `title_bans`
TITLE_NGRAM = 4  # with the start counted, no title opens with an earlier one's first three tokens
# Two titles this alike restate one point, or one is a misspelt copy the n-gram rule forced ("Elimination
# of Entertainment", "Elimation of Entertainment"; "Amino Acids", "Amino Acid"); 0.8 would also catch
# honest pairs. The data keeps no block with such titles (the decoder does not hold to it: measured,
# banning the close made the model extend titles, "The 20th Century, 21st Century", for no gain).
ALIKE_TITLES = 0.85
_NUMBER = re.compile(r"^\d{1,2}[.)]\s+")


@functools.lru_cache(maxsize=4)
def _word_mask(tokenizer, vocab_size: int, device: torch.device, exclude: frozenset[int]) -> torch.Tensor:
    n = min(len(tokenizer), vocab_size)
    texts = token_texts(tokenizer)[:n]
    mask = torch.zeros(vocab_size, dtype=torch.bool)
    mask[:n] = torch.tensor([any(c.isalpha() for c in t) for t in texts])
    mask[[i for i in (*tokenizer.all_special_ids, *exclude) if i < vocab_size]] = False
    return mask.to(device)


def word_mask(tokenizer, vocab_size: int, device: torch.device | str = "cpu",
              exclude: frozenset[int] = frozenset()) -> torch.Tensor:
    """[vocab] bool: tokens holding a letter (the only ones the repetition penalty touches),
    special tokens and `exclude` (markup) left out."""
    return _word_mask(tokenizer, vocab_size, torch.device(device), frozenset(exclude))


class History:
    """The tokens a stream wrote (answer text only), its words as a bit set, its n-grams, and (with a
    `utf8` table) the state its bytes left: 0 between characters, else a character is open.

    A branch starts as a `copy()` of the serial history; at the join the serial history takes
    each branch's own tokens back with `merge()`."""

    def __init__(self, words: torch.Tensor, utf8: Utf8Table | None = None):
        self.words, self.utf8 = words, utf8
        self.char = 0
        self.tokens: list[int] = []
        self.bits = torch.zeros_like(words)
        self.n = 0  # the n of `next`, built at the first `banned(n)`
        self.next: dict[tuple[int, ...], set[int]] = {}  # (n-1)-gram -> tokens that followed it
        self.base = 0  # length when copied: merge() takes what came after
        self.own: dict[tuple[int, ...], set[int]] = {}  # as `next`, of the n-grams wholly after a base > 0
        self.peers: list[History] = []  # sibling branches whose own n-grams this one may not repeat

    def add(self, token: int) -> None:
        self.tokens.append(token)
        if self.utf8 is not None:
            self.char = self.utf8.after(self.char, token)
        if self.words[token]:
            self.bits[token] = True
        if self.n and len(self.tokens) >= self.n:
            self._record(len(self.tokens) - 1)

    def _record(self, i: int) -> None:
        """Note the n-gram that ends at token i (in `own` too where it lies wholly after a base > 0)."""
        start, token = i - self.n + 1, self.tokens[i]
        key = tuple(self.tokens[start:i])
        self.next.setdefault(key, set()).add(token)
        if self.base and start >= self.base:
            self.own.setdefault(key, set()).add(token)

    def extend(self, tokens: Sequence[int]) -> None:
        for t in tokens:
            self.add(t)

    def copy(self) -> History:
        out = History(self.words, self.utf8)
        out.tokens, out.bits, out.n, out.char = list(self.tokens), self.bits.clone(), self.n, self.char
        out.next = {k: set(v) for k, v in self.next.items()}
        out.base = len(self.tokens)  # (its `own` starts empty)
        return out

    def merge(self, branch: History) -> None:
        self.extend(branch.tokens[branch.base:])
        self.char = 0  # the join closed every branch: a character left open by a cut branch stays cut

    def banned(self, n: int) -> list[int]:
        """Tokens that would repeat an n-gram already written, here or by a peer (n < 2: none). A
        peer's n-grams count only where they lie wholly in its own text: one reaching back into the
        text before the block is each sibling's own start there (serially, a later item follows its
        predecessor, not that text); shared, it banned every branch but the first from opening as the
        first did, so they opened "* 2. **", "**2.", "- 2. **" (a block after an answer's intro)."""
        if n < 2 or len(self.tokens) < n - 1:
            return []
        key = tuple(self.tokens[len(self.tokens) - n + 1:])
        out = set(self._following(n).get(key, ()))
        for p in self.peers:
            out |= p._own(n).get(key, set())
        return list(out)

    def _own(self, n: int) -> dict[tuple[int, ...], set[int]]:
        """As `_following`, of the n-grams wholly in what was written after the copy (all of them for a
        history copied empty: a block opening the answer)."""
        following = self._following(n)
        return self.own if self.base else following

    def _following(self, n: int) -> dict[tuple[int, ...], set[int]]:
        """(n-1)-gram -> the tokens that followed it, built for this n at first use."""
        if n != self.n:
            self.n, self.next, self.own = n, {}, {}
            for i in range(n - 1, len(self.tokens)):
                self._record(i)
        return self.next


def link(histories: Sequence[History]) -> None:
    """Make sibling branches peers: each may not repeat an n-gram another has written so far."""
    for h in histories:
        h.peers = [p for p in histories if p is not h]


def apply(logits: torch.Tensor, histories: Sequence[History], penalty: float, n: int,
          rows: Sequence[bool]) -> None:
    """In place, on [rows, vocab] logits: the word penalty, the n-gram bans and whole characters, on
    the rows where `rows[i]` (False while a title is written). While a character is open only its
    continuation bytes may follow, whatever the n-grams say: the bans act between characters."""
    on = [i for i, r in enumerate(rows) if r]
    if not on:
        return
    if penalty != 1.0:
        idx = torch.tensor(on, device=logits.device)
        sub = logits[idx]
        bits = torch.stack([histories[i].bits for i in on])
        penalised = torch.where(sub < 0, sub * penalty, sub / penalty)
        logits[idx] = torch.where(bits, penalised, sub)
    for i in on:
        h = histories[i]
        if h.utf8 is not None and h.char:
            logits[i].masked_fill_(h.utf8.bans[h.char], float("-inf"))
            continue
        ban = h.banned(n)
        if ban:
            logits[i, ban] = float("-inf")
        if h.utf8 is not None:
            logits[i, h.utf8.at_rest] = float("-inf")


def title_bans(titles: Sequence[Sequence[int]], words: torch.Tensor, end_title: int) -> frozenset[int]:
    """While the last of `titles` is written: the tokens that would repeat an earlier one (the engine
    passes every title of the answer so far). A title's content starts at its first word (its number
    and marks are not compared) and counts that start as a token: no title may repeat a
    TITLE_NGRAM-gram of an earlier title's content (so none opens with an earlier one's first three
    tokens), nor open with the whole of a shorter earlier one ("Stay healthy", then "Stay healthy
    with ..."), nor close equal to an earlier one, nor write a word token twice in a row, nor close
    before it holds a word (titles "1", "2", "3"). (Closing on an earlier title's words with another
    number, "Step 1" then "Step 2", stays allowed: banned, greedy escaped it with "Step 2-1-2-3-".)
    Greedy decoding otherwise writes the same title again and again, and equal titles give equal
    branches."""
    def content(t: Sequence[int]) -> list[int]:
        first = next((k for k, x in enumerate(t) if words[x]), len(t))
        return [_START, *t[first:]]

    *done, cur = [content(t) for t in titles]
    out = set()
    k = TITLE_NGRAM - 1
    if len(cur) >= k:
        key = cur[-k:]
        out |= {t[i + k] for t in done for i in range(len(t) - k) if t[i:i + k] == key}
    out |= {t[-1] for t in done if 1 < len(t) <= k and cur == t[:-1]}
    if len(cur) > 1 and words[cur[-1]]:  # no word token twice in a row ("Social Social Media"): the
        out.add(cur[-1])  # n-gram rule's cheapest escape (digits may repeat: "100" is three tokens)
    if len(cur) == 1 or cur in done:  # closes on no word yet ("1", "2", "3"), or equal to an earlier one
        out.add(end_title)
    return frozenset(out)


def title_key(title: str) -> str:
    """A title as compared for likeness: no number, lower case, letters, digits and spaces only."""
    return re.sub(r"[^a-z0-9 ]", "", _NUMBER.sub("", title.lower())).strip()


def alike_titles(titles: Sequence[str]) -> bool:
    """Whether the last of `titles` is alike an earlier one (`ALIKE_TITLES`)."""
    *done, cur = [title_key(t) for t in titles]
    return any(SequenceMatcher(None, cur, t).ratio() >= ALIKE_TITLES for t in done)


def breaks_title_rule(titles: Sequence[Sequence[int]], words: torch.Tensor, end_title: int) -> bool:
    """Whether a block's titles (token ids) hold a token `title_bans` would have banned: training
    titles must be writable under the rule the decoder enforces."""
    for k, t in enumerate(titles):
        for j, x in enumerate([*t, end_title]):
            if x in title_bans([*titles[:k], t[:j]], words, end_title):
                return True
    return False


class AntiLoopProcessor(LogitsProcessor):
    """The same rule as a transformers logits processor, for `model.generate` baselines: the history
    of row i is what it generated after the prompt (`prompt_len` tokens), kept across steps."""

    def __init__(self, words: torch.Tensor, prompt_len: int, penalty: float, n: int, utf8: Utf8Table | None = None):
        self.words, self.prompt_len, self.penalty, self.n, self.utf8 = words, prompt_len, penalty, n, utf8
        self.hist: list[History] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if len(self.hist) != input_ids.shape[0]:
            self.hist = [History(self.words.to(scores.device), self.utf8) for _ in range(input_ids.shape[0])]
        for h, row in zip(self.hist, input_ids):
            h.extend(row[self.prompt_len + len(h.tokens):].tolist())
        scores = scores.clone()
        apply(scores, self.hist, self.penalty, self.n, [True] * len(self.hist))
        return scores


def processors(words: torch.Tensor, prompt_len: int, penalty: float, n: int,
               utf8: Utf8Table | None = None) -> list[LogitsProcessor]:
    """`logits_processor=` for `generate` (`words`: `word_mask`; `utf8`: the engine's table): the
    rule, or nothing when it is off and there are no characters to keep whole."""
    if penalty == 1.0 and n < 2 and utf8 is None:
        return []
    return [AntiLoopProcessor(words, prompt_len, penalty, n, utf8)]
