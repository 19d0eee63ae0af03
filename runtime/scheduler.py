"""The serving loop's scheduler: admission, and what each loop turn computes.

Pure bookkeeping (no torch). A request asks with `can_submit` and joins the bounded queue with
`submit`; between engine steps the loop asks `can_admit` and moves the oldest waiting request into
the bounded running set with `admit`, so new requests join a running batch between steps and
finished ones leave it (`finish`). Running requests reserve their worst-case tokens (prompt +
max_new_tokens) against a token budget, so admitted requests never run out of room.

Each loop turn then asks what to compute: `next_prefill` (at most one prompt chunk: a prompt's first
chunk at once, the rest of a long one within `prefill_share` of the time while others decode) and
`decode_batch` (every running request with a step pending: one forward for all). `check()`
verifies the invariants.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

R = TypeVar("R")


class QueueFull(RuntimeError):
    """The waiting queue is at its bound: the server answers 429."""


class SchedulerError(RuntimeError):
    """A misuse of the scheduler (a bug, not a user error)."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_running: int = 16  # requests decoded together, one forward per step
    max_waiting: int = 64  # queued beyond that: 429
    max_tokens: int = 1 << 16  # reserved tokens (prompt + max_new_tokens) over running requests
    prefill_share: float = 1.0  # while others decode, prompt chunks take at most this share of the time


class Scheduler(Generic[R]):
    def __init__(self, config: SchedulerConfig, has_step: Callable[[R], bool] = lambda r: True):
        """`has_step(r)`: the running request `r` has a decode step pending (its prompt is computed)."""
        if (config.max_running < 1 or config.max_waiting < 0 or config.max_tokens < 1
                or not 0.0 < config.prefill_share <= 1.0):
            raise ValueError(f"bad scheduler config {config}")
        self.config, self.has_step = config, has_step
        self.waiting: deque[tuple[R, int]] = deque()
        self.running: dict[int, tuple[R, int]] = {}  # id(request) -> (request, reserved tokens)
        self.reserved = 0
        self.prefilling: dict[int, R] = {}  # running, prompt not yet all computed (oldest first)
        self._fed: set[int] = set()  # of those, the ones that had a chunk
        self._credit = 0.0  # seconds of prompt computing that decode steps have paid for

    def can_submit(self) -> bool:
        return len(self.waiting) < self.config.max_waiting

    def submit(self, request: R, tokens: int) -> None:
        if not self.can_submit():
            raise QueueFull(f"{len(self.waiting)} requests are already waiting; try again later")
        if tokens > self.config.max_tokens:
            raise SchedulerError(f"a request of {tokens} tokens can never fit {self.config.max_tokens}")
        self.waiting.append((request, tokens))

    def can_admit(self) -> bool:
        if not self.waiting or len(self.running) >= self.config.max_running:
            return False
        return self.reserved + self.waiting[0][1] <= self.config.max_tokens

    def admit(self) -> R:
        if not self.can_admit():
            raise SchedulerError("nothing can be admitted now (ask can_admit first)")
        request, tokens = self.waiting.popleft()
        self.running[id(request)] = (request, tokens)
        self.reserved += tokens
        return request

    def finish(self, request: R) -> None:
        """A running request leaves (done, failed or cancelled)."""
        entry = self.running.pop(id(request), None)
        if entry is None:
            raise SchedulerError("finish of a request that is not running")
        self.reserved -= entry[1]
        self.prefilled(request)

    def cancel(self, request: R) -> bool:
        """Drop a request wherever it is; True if it was known."""
        for i, (r, _) in enumerate(self.waiting):
            if r is request:
                del self.waiting[i]
                return True
        if id(request) in self.running:
            self.finish(request)
            return True
        return False

    def running_requests(self) -> list[R]:
        return [r for r, _ in self.running.values()]

    # ----------------------------------------------------------------- what a loop turn computes

    def start_prefill(self, request: R) -> None:
        """An admitted request whose prompt is computed a chunk per loop turn from now on."""
        if id(request) not in self.running:
            raise SchedulerError("prefill of a request that is not running")
        self.prefilling[id(request)] = request

    def prefilled(self, request: R) -> None:
        """Its prompt is all computed (or it left)."""
        self.prefilling.pop(id(request), None)
        self._fed.discard(id(request))

    def next_prefill(self) -> R | None:
        """The request whose next prompt chunk runs now, if any. A prompt's first chunk goes at once (a
        short prompt starts now); the rest of a long one waits for the time that decode steps pay
        for (`paid_decode`), so running streams keep their pace."""
        if not self.prefilling:
            return None
        fresh = next((r for k, r in self.prefilling.items() if k not in self._fed), None)
        if fresh is None and self._credit < 0 and any(self.has_step(r) for r, _ in self.running.values()):
            return None
        request = fresh if fresh is not None else next(iter(self.prefilling.values()))
        self._fed.add(id(request))
        return request

    def decode_batch(self) -> list[R]:
        """Every running request with a decode step pending: one forward for all of them."""
        return [r for r, _ in self.running.values() if self.has_step(r)]

    def paid_prefill(self, seconds: float) -> None:
        self._credit = min(self._credit, 0.0) - seconds

    def paid_decode(self, seconds: float) -> None:
        """Decode time earns prompt time: share / (1 - share) of it."""
        share = self.config.prefill_share
        self._credit += seconds * share / max(1.0 - share, 1e-9)

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def check(self) -> None:
        """Raise SchedulerError if an invariant is broken."""
        if self.reserved != sum(t for _, t in self.running.values()):
            raise SchedulerError(f"reserved {self.reserved} != the running requests' tokens")
        if len(self.running) > self.config.max_running or self.reserved > self.config.max_tokens:
            raise SchedulerError("the running set is over its bounds")
        if len(self.waiting) > self.config.max_waiting:
            raise SchedulerError("the waiting queue is over its bound")
        ids = [id(r) for r, _ in self.waiting]
        if len(set(ids)) != len(ids) or set(ids) & set(self.running):
            raise SchedulerError("a request is queued twice or both waiting and running")
        if not self.prefilling.keys() <= self.running.keys() or not self._fed <= self.prefilling.keys():
            raise SchedulerError("a request is prefilling but not running")
