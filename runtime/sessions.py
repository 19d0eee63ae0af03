"""Text-addressed sessions: held sequences that a later call finds by its key or by the text it sends.

SGLang's frontend sends each call with its executor's whole text. A held `Session` remembers the
text its sequence holds: a call whose text extends it continues it (`follow`: only the delta is
new), and a call that forks finds its parent by text (`parent`: the longest held prefix, for the
server's forked copies; `holding`: exactly the fork point, for NativeBackend's in-block branches).
`aspd serve`'s rid sessions and NativeBackend's executors both keep theirs in a `Sessions` table.

Bookkeeping only: the engine is asked to extend, copy or release a sequence, nothing else.
"""

from __future__ import annotations

import ctypes
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from .sequence import EngineError

if TYPE_CHECKING:
    from .engine import Engine
    from .sequence import SeqState


def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


_LIBC = _libc()


def give_back_memory() -> None:
    """glibc keeps freed K/V buffers in its heap (its mmap threshold rises as large blocks are freed),
    so a server's RSS would never come down after sessions end: hand the free pages back."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def joined_text(parent: str, branches: list[str]) -> str:
    """The parent's text after a join: each branch's text past the fork point, in join order (what
    SGLang's frontend appends too)."""
    return parent + "".join(b[len(parent):] for b in branches)


class SessionError(RuntimeError):
    """A broken invariant of a session table (a bug, not a user error)."""


@dataclass(eq=False)
class Session:
    text: str  # what the sequence holds, as the client wrote it
    seq: SeqState | None

    def follow(self, engine: Engine, text: str) -> bool:
        """Bring the sequence up to `text`, the delta queued (computed with the next forward); False,
        and nothing changed, when `text` does not continue the held text (the client rewrote it)."""
        if not text.startswith(self.text):
            return False
        if len(text) > len(self.text):
            engine.extend(self.seq, text[len(self.text):])
            self.text = text
        return True

    def fork(self, engine: Engine) -> Session:
        """An independent copy (its own K/V) to continue elsewhere: a branch forked off this text."""
        return Session(self.text, engine.copy_sequence(self.seq))


S = TypeVar("S", bound=Session)


class Sessions(Mapping[str, S]):
    """Sessions by key, least recently held first: read as a mapping, changed only by its methods.
    With `release`, what is dropped or evicted frees its K/V at once; `max_sessions` and
    `max_tokens` (K/V held, by capacity) bound what is kept."""

    def __init__(self, release: Callable[[SeqState], None] | None = None,
                 max_sessions: int | None = None, max_tokens: int | None = None):
        self._held: OrderedDict[str, S] = OrderedDict()
        self._release = release
        self.max_sessions, self.max_tokens = max_sessions, max_tokens

    def __getitem__(self, key: str) -> S:
        return self._held[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._held)

    def __len__(self) -> int:
        return len(self._held)

    @property
    def tokens(self) -> int:
        """The K/V the held sequences keep room for (the memory held, not just their tokens)."""
        return sum(s.seq.kv.capacity for s in self._held.values() if s.seq is not None and s.seq.kv is not None)

    # ----------------------------------------------------------------- holding and letting go

    def hold(self, key: str, session: S) -> bool:
        """Keep `session` under `key` (what was there is dropped), the most recently held; False (and
        the sequence freed) when it alone is over the token bound: a session only saves recomputing."""
        self.drop(key)
        if self.max_tokens is not None and session.seq.kv.capacity > self.max_tokens:
            self.free(session)
            return False
        self._held[key] = session
        self.evict()
        return True

    def take(self, key: str) -> S | None:
        """Remove the session under `key` and hand it over: its sequence is the caller's now."""
        return self._held.pop(key, None)

    def drop(self, key: str, trim: bool = True) -> bool:
        """Remove the session under `key` and free its sequence; False if none was held."""
        s = self._held.pop(key, None)
        if s is not None:
            self.free(s, trim)
        return s is not None

    def free(self, session: S, trim: bool = True) -> None:
        if self._release is not None and session.seq is not None:
            self._release(session.seq)
            if trim:
                give_back_memory()

    def touch(self, key: str) -> None:
        self._held.move_to_end(key)

    def evict(self) -> None:
        """The least recently held sessions go until both bounds hold."""
        evicted = False
        while self._held and self._over():
            _, s = self._held.popitem(last=False)
            self.free(s, trim=False)
            evicted = True
        if evicted:
            give_back_memory()

    def _over(self) -> bool:
        return ((self.max_sessions is not None and len(self._held) > self.max_sessions)
                or (self.max_tokens is not None and self.tokens > self.max_tokens))

    def graft(self, engine: Engine, src_keys: list[str], dst_key: str) -> None:
        """The ASPD join across sequences: the branch sessions (forked off the destination's text)
        grafted onto the destination as one block, in this order, and dropped (`Engine.graft`)."""
        dst = self._held[dst_key]
        srcs = [self._held[k] for k in src_keys]
        for key, s in zip(src_keys, srcs):
            if not s.text.startswith(dst.text):
                raise EngineError(f"the text of {key!r} does not continue the text of {dst_key!r}")
        engine.graft(dst.seq, [s.seq for s in srcs])
        dst.text = joined_text(dst.text, [s.text for s in srcs])
        for key in src_keys:
            self.drop(key, trim=False)
        give_back_memory()  # once for all the branches
        self.touch(dst_key)
        self.evict()

    # ----------------------------------------------------------------- found by text

    def parent(self, text: str) -> S | None:
        """The session whose text is the longest prefix of `text` (the earliest held among equals):
        the one a call with this text forked off."""
        best = None
        for s in self._held.values():
            if text.startswith(s.text) and (best is None or len(s.text) > len(best.text)):
                best = s
        return best

    def holding(self, text: str, where: Callable[[S], bool] = lambda s: True) -> S | None:
        """The most recently held session whose text is exactly `text` (and that `where` accepts)."""
        return next((s for s in reversed(self._held.values()) if s.text == text and where(s)), None)

    def check(self) -> None:
        """Raise SessionError if an invariant is broken."""
        held = list(self._held.values())
        if len({id(s) for s in held}) != len(held):
            raise SessionError("a session is held under two keys")
        if any(s.seq is not None and s.seq.kv is None for s in held):
            raise SessionError("a held session's sequence was released")
        if self._over():
            raise SessionError("the held sessions are over their bounds")
