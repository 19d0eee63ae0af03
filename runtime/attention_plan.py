"""Plan one decoding step's attention as a two-level cascade (what FlashInfer's cascade kernels take).

ASPD's branches are the textbook cascade: many queries over one shared prefix plus a short private
suffix each. For every sequence in the step:

- level 0 (`shared`, not causal): the cached keys every one of the sequence's new queries may see
  (the prompt, earlier serial text, closed blocks): one request per sequence;
- level 1 (`own`, causal, bottom-right aligned): per group of queries with the same tag (the serial
  stream, or one branch of the open block), the remaining keys its last query sees (its own branch
  so far, new serial tokens) ending with the group's queries themselves: one request per group.

Indices address a token pool (page size 1, so any token list is a page table: how SGLang uses
FlashInfer too). Plain Python, no torch: the planner is unit-tested against the protocol's mask
(`runtime.protocol.visible`, the rule training and the SDPA path use), and `dense_mask` rebuilds the
mask a plan implies so that the two can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .protocol import Tag, visible


class PlanError(ValueError):
    """A step whose mask is not a two-level cascade (the caller falls back to a dense mask)."""


@dataclass(frozen=True)
class SeqStep:
    """One sequence in a step: the tags of its cached tokens (new ones last), how many are new
    (the queries), and where its tokens start in the pool."""

    tags: tuple[Tag, ...]
    n_new: int
    pool_start: int = 0


@dataclass(frozen=True)
class Level:
    """FlashInfer's per-level arrays with page size 1: request r has queries
    qo_indptr[r]:qo_indptr[r+1] (in plan order) and keys kv_indices[kv_indptr[r]:kv_indptr[r+1]]."""

    qo_indptr: tuple[int, ...]
    kv_indptr: tuple[int, ...]
    kv_indices: tuple[int, ...]
    causal: bool

    @property
    def last_page_len(self) -> tuple[int, ...]:
        return tuple(1 if self.kv_indptr[r + 1] > self.kv_indptr[r] else 0 for r in range(len(self.kv_indptr) - 1))


@dataclass(frozen=True)
class CascadePlan:
    order: tuple[int, ...]  # plan row r is the step's query order[r] (queries in input order: each
    #                         sequence's new tokens, sequence after sequence)
    shared: Level
    own: Level

    @property
    def num_queries(self) -> int:
        return len(self.order)


def _sees(tags: Sequence[Tag], q: int, k: int) -> bool:
    return bool(visible(q, tags[q].block, tags[q].branch, k, tags[k].block, tags[k].branch))


def plan(steps: Sequence[SeqStep]) -> CascadePlan:
    order: list[int] = []
    shared_qo, shared_kv, shared_idx = [0], [0], []
    own_qo, own_kv, own_idx = [0], [0], []
    q_base = 0
    for s in steps:
        n_all, tags = len(s.tags), s.tags
        if not 0 < s.n_new <= n_all:
            raise PlanError(f"a sequence needs 1..{n_all} new tokens, not {s.n_new}")
        first = n_all - s.n_new
        queries = range(first, n_all)
        shared = [k for k in range(first) if all(_sees(tags, q, k) for q in queries)]
        shared_set = set(shared)
        shared_idx += [s.pool_start + k for k in shared]
        shared_kv.append(len(shared_idx))
        groups: dict[Tag, list[int]] = {}
        for q in queries:
            groups.setdefault(tags[q], []).append(q)
        for qs in groups.values():
            keys = [k for k in range(n_all) if k not in shared_set and _sees(tags, qs[-1], k)]
            _check_causal(tags, qs, keys)
            own_idx += [s.pool_start + k for k in keys]
            own_kv.append(len(own_idx))
            order += [q_base + q - first for q in qs]
            own_qo.append(len(order))
        shared_qo.append(len(order))
        q_base += s.n_new
    return CascadePlan(order=tuple(order),
                       shared=Level(tuple(shared_qo), tuple(shared_kv), tuple(shared_idx), causal=False),
                       own=Level(tuple(own_qo), tuple(own_kv), tuple(own_idx), causal=True))


def _check_causal(tags: Sequence[Tag], qs: list[int], keys: list[int]) -> None:
    """The group's queries must be the tail of its key list and each must see exactly the keys up to
    itself (bottom-right causal alignment), or the cascade would compute a different mask."""
    m = len(qs)
    if keys[-m:] != qs:
        raise PlanError(f"queries {qs} are not the last of the keys their group sees")
    for i, q in enumerate(qs):
        allowed = set(keys[:len(keys) - m + i + 1])
        if any(_sees(tags, q, k) != (k in allowed) for k in keys):
            raise PlanError(f"query {q} does not see a causal prefix of its group's keys")


def dense_mask(p: CascadePlan, pool_size: int) -> list[list[bool]]:
    """The mask [plan row][pool token] the plan implies: its sequence's shared keys, plus its group's
    keys up to its own causal row."""
    rows = [[False] * pool_size for _ in range(p.num_queries)]
    for lvl in (p.shared, p.own):
        for r in range(len(lvl.qo_indptr) - 1):
            q0, q1 = lvl.qo_indptr[r], lvl.qo_indptr[r + 1]
            keys = lvl.kv_indices[lvl.kv_indptr[r]:lvl.kv_indptr[r + 1]]
            for i, row in enumerate(range(q0, q1)):
                upto = len(keys) - (q1 - q0) + i + 1 if lvl.causal else len(keys)
                for k in keys[:upto]:
                    rows[row][k] = True
    return rows
