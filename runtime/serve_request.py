"""A request to the serving loop, the loop's settings and counters, and what a stream may show.

No torch at import: `Request` is what a caller submits plus the state the loop keeps for it between
steps (its sequence, its run, its prompt log-probs); only the loop's thread changes that state.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .outcomes import Result
from .outputs import GenerationOutput, token_logprob
from .sampling import SamplingParams

if TYPE_CHECKING:
    import torch

    from .model_runner import Forward
    from .outcomes import Event
    from .run import Run
    from .run_kind import Mode
    from .sequence import SeqState


@dataclass(frozen=True)
class ServeConfig:
    max_running: int = 16
    max_waiting: int = 64
    cache_tokens: int = 32768  # radix prefix cache budget; 0 turns prefix caching off
    max_sessions: int = 256  # held rid sessions (LRU)
    session_tokens: int = 32768  # and their tokens: each holds its own KV (~23 KB a token for SmolLM2-135M)
    prefill_chunk: int = 128  # prompt tokens per forward: a long prompt interleaves with running decodes
    prefill_share: float = 0.3  # while others decode, prompt chunks take at most this share of the time


@dataclass(frozen=True)
class LogprobSpec:
    start: int  # first prompt token whose log-prob is returned
    top: int = 0  # alternatives per token


@dataclass(eq=False)
class Request:
    params: SamplingParams
    emit: Callable[[Event], None]
    text: str | None = None
    input_ids: list[int] | None = None
    rid: str | None = None
    mode: Mode = "ar"
    logprobs: LogprobSpec | None = None
    stream: bool = False
    # the loop's state
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    ids: list[int] = field(default_factory=list)
    seq: SeqState | None = None
    gen: Any = None
    fwd: Forward | None = None  # the pending decode step (None while its prompt is computed)
    run: Run | None = None  # the request's decoding run: its steps, its text so far (streaming), its output
    sent: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    input_logprobs: list | None = None
    t0: float = field(default_factory=time.perf_counter)
    cancelled: bool = False
    lp_from: int | None = None  # first prompt row whose log-probs are computed
    prompt_lps: dict[int, tuple] = field(default_factory=dict)  # prompt token index -> its log-prob triple

    @property
    def first_logprob_token(self) -> int:
        """The first prompt token whose log-prob is returned (`logprob_start_len`, within the prompt)."""
        return max(min(self.logprobs.start, len(self.ids) - 1), 0)

    def add_prompt_logprobs(self, rows: torch.Tensor, first_row: int) -> None:
        """A prompt chunk's log-prob rows: row k holds those at prompt index first_row + k, i.e. of the
        token after it."""
        start = self.first_logprob_token
        for k in range(rows.shape[0]):
            i = first_row + k + 1
            if start <= i < len(self.ids):
                self.prompt_lps[i] = token_logprob(rows[k], self.ids[i], self.logprobs.top)

    def collect_input_logprobs(self) -> None:
        """The prompt is computed: its log-prob triples in order (None where a token has no row)."""
        self.input_logprobs = [self.prompt_lps.get(i, (None, self.ids[i], []))
                               for i in range(self.first_logprob_token, len(self.ids))]
        self.prompt_lps = {}

    def result(self, output: GenerationOutput) -> Result:
        return Result(rid=self.rid or self.id, output=output, prompt_tokens=self.prompt_tokens,
                      cached_tokens=self.cached_tokens, input_logprobs=self.input_logprobs,
                      latency_s=time.perf_counter() - self.t0)


@dataclass
class Counters:
    requests: int = 0
    finished: int = 0
    failed: int = 0
    cancelled: int = 0
    rejected: int = 0
    prefill_tokens: int = 0  # prompt tokens computed
    cached_tokens: int = 0  # prompt tokens taken from the prefix cache or a session
    generated_tokens: int = 0
    steps: int = 0
    batched_rows: int = 0  # sum over steps of the requests in the step


def stable_text(text: str, stops: tuple[str, ...]) -> str:
    """The part of a growing text that can be sent: without a trailing incomplete character, and
    without a tail that could still turn into a stop string (it would be cut)."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:k]):
                hold = max(hold, k)
                break
    return text[:len(text) - hold]
