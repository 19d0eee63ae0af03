"""What the serving loop tells a request's owner: its text while it runs, then one typed outcome.

The loop speaks in outcomes, never in HTTP: the server maps each to a status code in one place
(`http_errors.py`); offline callers (`offline.complete`) read them as they are. Pure data.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from .outputs import GenerationOutput
from .sequence import EngineError


class Outcome(enum.StrEnum):
    """How a request (or a join) ended."""

    DONE = "done"  # answered: a result (its finish reason stop, length or abort)
    INVALID = "invalid"  # it cannot be served as sent (its prompt, its rid, the context window)
    REJECTED = "rejected"  # the queue is full: the same request may succeed later
    NOT_FOUND = "not_found"  # a rid no session is held for
    FAILED = "failed"  # the server's own failure
    CANCELLED = "cancelled"  # the client went away: nobody reads an answer


class UnknownRid(EngineError):
    """A join names a rid no session is held for (`Outcome.NOT_FOUND`)."""


@dataclass(frozen=True)
class Result:
    rid: str
    output: GenerationOutput
    prompt_tokens: int
    cached_tokens: int
    input_logprobs: list[tuple[float | None, int, list[tuple[float, int]]]] | None  # from logprob_start_len
    latency_s: float


@dataclass(frozen=True)
class Event:
    """The text so far (cumulative) while `outcome` is None; then the end: a result, or an error."""

    text: str
    outcome: Outcome | None = None
    result: Result | None = None
    error: str | None = None  # why, for every outcome but DONE

    @property
    def done(self) -> bool:
        return self.outcome is not None

    @classmethod
    def finished(cls, result: Result) -> Event:
        return cls(result.output.text, Outcome.DONE, result)

    @classmethod
    def refused(cls, outcome: Outcome, error: str, text: str = "") -> Event:
        return cls(text, outcome, error=error)
