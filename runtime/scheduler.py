"""Admission control for the serving loop: a bounded waiting queue and a bounded running set.

Pure bookkeeping (no torch). A request asks with `can_submit` and joins the queue with `submit`;
between engine steps the loop asks `can_admit` and moves the oldest waiting request into the
running set with `admit`, so new requests join a running batch between steps and finished ones
leave it (`finish`). Running requests reserve their worst-case tokens (prompt + max_new_tokens)
against a token budget, so admitted requests never run out of room. `check()` verifies the
invariants.
"""

from __future__ import annotations

from collections import deque
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


class Scheduler(Generic[R]):
    def __init__(self, config: SchedulerConfig):
        if config.max_running < 1 or config.max_waiting < 0 or config.max_tokens < 1:
            raise ValueError(f"bad scheduler config {config}")
        self.config = config
        self.waiting: deque[tuple[R, int]] = deque()
        self.running: dict[int, tuple[R, int]] = {}  # id(request) -> (request, reserved tokens)
        self.reserved = 0

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
