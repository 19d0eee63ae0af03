"""What one decoding call is (`RunKind`) and the step-generator type every run is written in."""

from __future__ import annotations

import enum
from collections.abc import Callable, Generator
from typing import Literal, TypeVar

import torch

from .model_runner import Forward
from .protocol import Response

Mode = Literal["aspd", "ar"]
T = TypeVar("T")
Steps = Generator[Forward, torch.Tensor, T]  # yields one forward's worth of work, is sent its logits


class RunKind(enum.Enum):
    ADAPTIVE = "aspd"
    AR = "ar"
    FORK = "fork"
    PLAIN_FORK = "plain_fork"
    BRANCHES = "branches"

    @property
    def serial(self) -> bool:
        """Serial decoding: a block's join feeds <|/para|> and decoding goes on after it."""
        return self in (RunKind.ADAPTIVE, RunKind.AR)

    @property
    def markup(self) -> bool:
        """Branches are written in ASPD markup (closed by <|/branch|>, under the constraint)."""
        return self in (RunKind.ADAPTIVE, RunKind.AR, RunKind.FORK)

    @property
    def joins(self) -> bool:
        """The run closes the block it decodes (BRANCHES leaves it open)."""
        return self is not RunKind.BRANCHES

    def text(self, resp: Response) -> str:
        """The call's text: the answer's, or a fork's branches in order (a plain fork's each after its seed)."""
        match self:
            case RunKind.PLAIN_FORK:
                return "".join(b.title + b.body for b in resp.blocks[0].branches)
            case RunKind.BRANCHES:
                return "".join(b.body for b in resp.blocks[0].branches)
            case _:
                return resp.answer_text()


def drive_all(forward_many: Callable[[list[Forward]], list[torch.Tensor]], runs: list[Steps[T]]) -> list[T]:
    """Drive many step generators (`Engine.fork_steps`, `Run.steps`) to their ends with one batched
    forward per step (`ModelRunner.forward_many`), as the serving loop does; their results in order."""
    out: list = [None] * len(runs)
    live: dict[int, tuple[Steps[T], Forward]] = {}
    for i, steps in enumerate(runs):
        try:
            live[i] = (steps, next(steps))
        except StopIteration as done:
            out[i] = done.value
    while live:
        items = list(live.items())
        for (i, (steps, _)), row in zip(items, forward_many([fwd for _, (_, fwd) in items])):
            try:
                live[i] = (steps, steps.send(row))
            except StopIteration as done:
                out[i] = done.value
                del live[i]
    return out
