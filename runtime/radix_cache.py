"""A radix tree over token ids: which prefixes have cached KV, with LRU eviction under a token budget.

Pure bookkeeping (no torch): each node covers a run of tokens and holds an opaque `value` for
them (the server stores the KV slice there). The server `match`es a prompt to find the longest
cached prefix and copies its slices into the new sequence at once (so no request holds a path), and
`insert`s what it computed. `lock`/`unlock` keep a path from eviction: `insert` locks the prefix it
extends while it evicts.
Insertion is an ask/commit pair: `can_insert(n)` says whether n new tokens fit after evicting
unlocked least-recently-used leaves; `insert` then commits. `check()` verifies the invariants.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


class CacheError(RuntimeError):
    """A broken invariant or a misuse of the cache (a bug, not a user error)."""


@dataclass(eq=False)
class Node:
    tokens: tuple[int, ...] = ()
    value: Any = None  # the payload for exactly these tokens (e.g. their KV)
    parent: Node | None = None
    children: dict[int, Node] = field(default_factory=dict)  # keyed by first token
    locks: int = 0
    last_use: int = 0

    @property
    def is_leaf(self) -> bool:
        return not self.children


@dataclass(frozen=True)
class Match:
    length: int  # tokens matched
    path: tuple[Node, ...]  # root excluded, in order (payloads for exactly the matched tokens)

    @property
    def last(self) -> Node | None:
        return self.path[-1] if self.path else None


class RadixCache:
    def __init__(self, budget_tokens: int, split: Callable[[Any, int], tuple[Any, Any]] | None = None):
        """`split(value, k)` cuts a node's payload after its first k tokens (needed when an insert
        or a match ends inside a node); without it payloads are None."""
        if budget_tokens < 0:
            raise ValueError("budget_tokens must be >= 0")
        self.budget = budget_tokens
        self.root = Node()
        self.size = 0  # tokens held
        self._split_value = split or (lambda v, k: (None, None))
        self._clock = itertools.count(1)

    # ----------------------------------------------------------------- queries

    def match(self, tokens: Sequence[int]) -> Match:
        """The longest cached prefix of `tokens` (whole nodes only; a partial node is split)."""
        node, i, path = self.root, 0, []
        tick = next(self._clock)
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                break
            k = _common(child.tokens, tokens[i:])
            if k < len(child.tokens):
                child = self._split(child, k)
            child.last_use = tick
            path.append(child)
            i += k
            node = child
            if k < len(child.tokens):
                break
        return Match(i, tuple(path))

    # ----------------------------------------------------------------- locking

    # A lock holds a node and all its ancestors. It walks up from the node at unlock time too,
    # so a node split meanwhile (a new parent in between) is released correctly.

    def lock(self, m: Match) -> None:
        n = m.last
        while n is not None and n is not self.root:
            n.locks += 1
            n = n.parent

    def unlock(self, m: Match) -> None:
        n = m.last
        while n is not None and n is not self.root:
            if n.locks <= 0:
                raise CacheError("unlock of a node that is not locked")
            n.locks -= 1
            n = n.parent

    # ----------------------------------------------------------------- insert (ask / commit)

    def evictable(self) -> int:
        """Tokens that eviction could free: nodes whose whole subtree is unlocked."""
        def free(n: Node) -> tuple[int, bool]:
            total, all_free = 0, n.locks == 0
            for c in n.children.values():
                t, f = free(c)
                total += t
                all_free &= f
            return (total + len(n.tokens) if all_free else total), all_free

        return sum(free(c)[0] for c in self.root.children.values())

    def can_insert(self, n_new: int) -> bool:
        return self.size + n_new - self.evictable() <= self.budget

    def insert(self, tokens: Sequence[int], value: Any = None, start: int | None = None) -> Match:
        """Cache `tokens`; `value` is the payload of the part not cached yet, which must begin at
        `start` when given (the caller computed it from a match). Evicts LRU leaves as needed;
        call `can_insert` first."""
        m = self.match(tokens)
        new = len(tokens) - m.length
        if start is not None and start != m.length:
            raise CacheError(f"the payload starts at token {start} but the cache now ends at {m.length}")
        if new == 0:
            return m
        if not self.can_insert(new):
            raise CacheError(f"{new} tokens do not fit the budget of {self.budget} (ask can_insert first)")
        self.lock(m)  # the prefix we extend must survive the eviction below
        try:
            self.evict(self.size + new - self.budget)
        finally:
            self.unlock(m)
        parent = m.path[-1] if m.path else self.root
        leaf = Node(tokens=tuple(tokens[m.length:]), value=value, parent=parent, last_use=next(self._clock))
        parent.children[leaf.tokens[0]] = leaf
        self.size += new
        return Match(len(tokens), (*m.path, leaf))

    def evict(self, n_tokens: int) -> int:
        """Drop unlocked leaves, least recently used first, until n_tokens are freed."""
        freed = 0
        while freed < n_tokens:
            leaves = [n for n in self._nodes() if n.is_leaf and n.locks == 0]
            if not leaves:
                break
            victim = min(leaves, key=lambda n: n.last_use)
            del victim.parent.children[victim.tokens[0]]
            freed += len(victim.tokens)
            self.size -= len(victim.tokens)
        return freed

    def clear(self) -> None:
        if any(n.locks for n in self._nodes()):
            raise CacheError("cannot clear a cache that requests are using")
        self.root.children.clear()
        self.size = 0

    # ----------------------------------------------------------------- internals

    def _split(self, node: Node, k: int) -> Node:
        """Cut `node` after k tokens: a new parent holds the first k, `node` keeps the rest."""
        head_value, tail_value = self._split_value(node.value, k)
        head = Node(tokens=node.tokens[:k], value=head_value, parent=node.parent, locks=node.locks,
                    last_use=node.last_use)
        node.parent.children[head.tokens[0]] = head
        node.tokens, node.value, node.parent = node.tokens[k:], tail_value, head
        head.children[node.tokens[0]] = node
        return head

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def check(self) -> None:
        """Raise CacheError if an invariant is broken."""
        total = 0
        for n in self._nodes():
            if not n.tokens:
                raise CacheError("an empty node")
            if n.parent.children.get(n.tokens[0]) is not n:
                raise CacheError("a node is not where its parent says")
            if n.locks < 0:
                raise CacheError("negative lock count")
            if n.parent is not self.root and n.parent.locks < n.locks:
                raise CacheError("a locked node under a less locked parent")
            total += len(n.tokens)
        if total != self.size:
            raise CacheError(f"size {self.size} but nodes hold {total} tokens")
        if self.size > self.budget:
            raise CacheError(f"size {self.size} over the budget {self.budget}")


def _common(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
