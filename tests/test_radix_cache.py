"""The radix prefix cache: pure bookkeeping, milliseconds."""

from __future__ import annotations

import random

import pytest

from runtime.radix_cache import CacheError, RadixCache


def _split(value, k):
    return value[:k], value[k:]


def test_match_insert_and_split_keep_payloads_aligned():
    c = RadixCache(100, split=_split)
    c.insert([1, 2, 3, 4], ["a", "b", "c", "d"])
    m = c.match([1, 2, 9])
    assert m.length == 2 and [n.value for n in m.path] == [["a", "b"]]
    c.insert([1, 2, 9, 8], ["x", "y"], start=2)
    assert [v for n in c.match([1, 2, 3, 4]).path for v in n.value] == ["a", "b", "c", "d"]
    assert [v for n in c.match([1, 2, 9, 8, 7]).path for v in n.value] == ["a", "b", "x", "y"]
    assert c.size == 6
    c.check()


def test_lru_eviction_spares_locked_paths_and_ask_commit():
    c = RadixCache(8)
    c.insert([1, 2, 3, 4])
    c.insert([5, 6, 7, 8])
    held = c.match([1, 2, 3, 4])
    c.lock(held)
    assert c.evictable() == 4 and c.can_insert(4) and not c.can_insert(5)
    with pytest.raises(CacheError, match="do not fit"):
        c.insert([9, 9, 9, 9, 9])
    c.insert([9, 9, 9, 9])  # evicts the unlocked [5..8]
    assert c.match([5, 6]).length == 0 and c.match([1, 2, 3, 4]).length == 4
    c.unlock(held)
    c.match([9, 9, 9, 9])  # now the most recently used
    c.insert([7, 7, 7])  # needs 3 tokens: the least recently used leaf, [1..4], goes
    assert c.match([1]).length == 0 and c.match([9, 9, 9, 9]).length == 4 and c.size == 7
    c.check()


def test_lock_survives_a_split_of_the_locked_node():
    c = RadixCache(100)
    c.insert([1, 2, 3, 4])
    m = c.match([1, 2, 3, 4])
    c.lock(m)
    c.insert([1, 2, 7])  # splits the locked node under the lock
    c.check()
    c.unlock(m)
    c.check()
    assert all(n.locks == 0 for n in c._nodes())
    with pytest.raises(CacheError, match="not locked"):
        c.unlock(m)


def test_random_workload_keeps_invariants():
    rng = random.Random(0)
    c = RadixCache(200, split=_split)
    held = []
    for _ in range(500):
        toks = [rng.randrange(4) for _ in range(rng.randrange(1, 30))]
        m = c.match(toks)
        if c.can_insert(len(toks) - m.length):
            m = c.insert(toks, list(toks[m.length:]), start=m.length)
            assert [v for n in m.path for v in n.value] == toks
        if rng.random() < 0.3:
            c.lock(m)
            held.append(m)
        if held and rng.random() < 0.3:
            c.unlock(held.pop(rng.randrange(len(held))))
        c.check()
    for m in held:
        c.unlock(m)
    c.clear()
    assert c.size == 0
