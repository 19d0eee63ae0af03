"""Prefix K/V export and reuse (what the radix prefix cache stores), exact on the tiny model."""

from __future__ import annotations

import pytest
import torch

from runtime.engine import EngineError
from runtime.model_runner import KVSlice
from runtime.radix_cache import RadixCache


def test_sequence_from_a_cached_prefix_equals_a_fresh_one(engine):
    a = engine.new_sequence("a shared system prompt; question one")
    engine.prefill(a)
    n = len(engine.encode("a shared system prompt;"))
    prefix = engine.export_prefix(a, n)
    b = engine.new_sequence("a shared system prompt; question two", prefix=prefix)
    fresh = engine.new_sequence("a shared system prompt; question two")
    forwards = engine.runner.forwards
    torch.testing.assert_close(engine.next_logits(b), engine.next_logits(fresh), atol=1e-5, rtol=0)
    assert b.kv.length == fresh.kv.length  # the prefix was loaded, the rest computed
    assert engine.runner.forwards == forwards + 2


def test_prefix_slices_through_the_radix_cache(engine):
    cache = RadixCache(1000, split=lambda v, k: v.split(k))
    a = engine.new_sequence("tips: eat well")
    engine.prefill(a)
    ids = engine.encode("tips: eat well")
    cache.insert(ids, engine.export_prefix(a, len(ids)))
    other = engine.encode("tips: sleep more")
    m = cache.match(other)
    assert m.length == len(engine.encode("tips: "))  # the shared part only
    prefix = KVSlice.concat([n.value for n in m.path])
    assert prefix.n == m.length
    b = engine.new_sequence(other, prefix=prefix)
    fresh = engine.new_sequence(other)
    torch.testing.assert_close(engine.next_logits(b), engine.next_logits(fresh), atol=1e-5, rtol=0)
    cache.check()


def test_bad_prefix_use_is_refused(engine):
    a = engine.new_sequence("abc")
    with pytest.raises(EngineError, match="not a computed serial prefix"):
        engine.export_prefix(a, 2)  # nothing computed yet
    engine.prefill(a)
    with pytest.raises(EngineError, match="at least one prompt token"):
        engine.new_sequence("abc", prefix=engine.export_prefix(a, 3))
