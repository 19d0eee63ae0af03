"""What a decoding call hands back: `GenerationOutput`, its per-block `BlockStats` and `FinishReason`.

Pure data (pydantic); the log-prob triples are read off a tensor row by `token_logprob`.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from pydantic import BaseModel

from .protocol import Response

if TYPE_CHECKING:
    import torch


class FinishReason(enum.StrEnum):
    """Why a call (or one branch) stopped. The values are the wire format's strings."""

    STOP = "stop"  # a stop token or stop string (a branch: its closing token)
    LENGTH = "length"  # the token budget ran out
    JOIN = "join"  # an explicit fork ended at its join
    BRANCHES = "branches"  # decode_branches: every branch asked for stopped; the block stays open
    ABORT = "abort"  # the request was cancelled before it finished
    IDLE = "idle"  # a plain block's branch between decode_branches calls (never a call's reason)


class BlockStats(BaseModel):
    titles: list[str]
    branch_tokens: list[int]
    steps: int


LogProb = tuple[float, int, list[tuple[float, int]]]  # (log-prob, token id, top alternatives as (log-prob, id))


class GenerationOutput(BaseModel):
    """What one generate or fork call produced, with its timings."""

    text: str
    markup: str
    response: Response
    finish_reason: FinishReason
    stop_token: int | None = None  # the stop token id that ended a serial generation, if one did
    prompt_tokens: int
    completion_tokens: int
    serial_tokens: int
    parallel_tokens: int
    forward_passes: int
    blocks: list[BlockStats]
    ttft_s: float
    total_s: float
    token_logprobs: list[LogProb] | None = None  # per serial token, when asked

    @classmethod
    def empty(cls, prompt_tokens: int = 0, finish_reason: FinishReason = FinishReason.ABORT) -> GenerationOutput:
        """Nothing generated (a request ended before it started)."""
        return cls(text="", markup="", response=Response(segments=()), finish_reason=finish_reason,
                   prompt_tokens=prompt_tokens, completion_tokens=0, serial_tokens=0, parallel_tokens=0,
                   forward_passes=0, blocks=[], ttft_s=0.0, total_s=0.0)

    @property
    def critical_path_tokens(self) -> int:
        """Tokens on the longest chain of dependent steps: serial ones plus each block's longest branch."""
        return self.serial_tokens + sum(max(b.branch_tokens, default=0) for b in self.blocks)

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.total_s if self.total_s > 0 else 0.0


def token_logprob(lp: torch.Tensor, tok: int, top: int) -> LogProb:
    """(log-prob of `tok`, tok, the `top` best (log-prob, id) alternatives) from a log-prob row."""
    if not top:
        return lp[tok].item(), tok, []
    best = lp.topk(top)
    return lp[tok].item(), tok, list(zip(best.values.tolist(), best.indices.tolist()))
