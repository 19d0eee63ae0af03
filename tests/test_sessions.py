"""The session layer's bookkeeping (torch-free): found by key and by text, bounds, invariants."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from runtime.sessions import Session, SessionError, Sessions, joined_text


@dataclass(eq=False)
class KV:
    capacity: int


@dataclass(eq=False)
class Seq:
    tokens: list[str] = field(default_factory=list)
    kv: KV | None = field(default_factory=lambda: KV(10))


class Eng:
    """The three engine calls a session makes."""

    def __init__(self):
        self.released = []

    def extend(self, seq, text):
        seq.tokens.append(text)

    def copy_sequence(self, seq):
        return Seq(list(seq.tokens), KV(seq.kv.capacity))

    def release(self, seq):
        seq.kv = None
        self.released.append(seq)


def test_follow_extends_by_the_delta_or_refuses_a_rewrite():
    eng, s = Eng(), Session("ab", Seq(["ab"]))
    assert s.follow(eng, "abcd") and s.text == "abcd" and s.seq.tokens == ["ab", "cd"]
    assert s.follow(eng, "abcd") and s.seq.tokens == ["ab", "cd"]  # nothing new: nothing queued
    assert not s.follow(eng, "xbcd") and s.text == "abcd"
    child = s.fork(eng)
    assert child.seq is not s.seq and child.text == s.text


def test_found_by_text():
    t: Sessions[Session] = Sessions()
    a, b, b2 = Session("a", Seq()), Session("a b", Seq()), Session("a b", Seq())
    for key, s in (("a", a), ("b", b), ("b2", b2)):
        t.hold(key, s)
    assert t.parent("a b c") is b  # the longest prefix, the earliest held among equals
    assert t.parent("a x") is a and t.parent("x") is None
    assert t.holding("a b") is b2 and t.holding("a b", lambda s: s is not b2) is b
    assert t.holding("a b c") is None
    assert joined_text("p:", ["p: one", "p: two"]) == "p: one two"


def test_bounds_evict_the_least_recently_held_and_free_them():
    eng = Eng()
    t: Sessions[Session] = Sessions(eng.release, max_sessions=2, max_tokens=25)
    s = [Session(str(i), Seq()) for i in range(4)]
    t.hold("0", s[0])
    t.hold("1", s[1])
    t.touch("0")
    t.hold("2", s[2])  # three over the bound of two: "1" goes, not the touched "0"
    assert list(t) == ["0", "2"] and eng.released == [s[1].seq]
    assert not t.hold("big", Session("big", Seq(kv=KV(26))))  # alone over the token bound: freed
    assert "big" not in t and len(eng.released) == 2
    assert t.take("0") is s[0] and s[0].seq.kv is not None  # handed over, not freed
    assert t.drop("2") and not t.drop("2") and s[2].seq.kv is None
    t.check()


def test_check_catches_broken_bookkeeping():
    t: Sessions[Session] = Sessions()
    s = Session("a", Seq())
    t.hold("a", s)
    t.hold("b", s)
    with pytest.raises(SessionError, match="two keys"):
        t.check()
    t.take("b")
    s.seq.kv = None
    with pytest.raises(SessionError, match="released"):
        t.check()


def test_read_as_a_mapping():
    t: Sessions[Session] = Sessions()
    assert t == {} and t.get("x") is None
    s = Session("a", None)
    t.hold("k", s)
    assert t == {"k": s} and t["k"] is s and dict(t.items()) == {"k": s}
