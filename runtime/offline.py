"""Offline batch answering: many prompts through one `ServingLoop`, with continuous batching, as the
data pipeline and calibration answer theirs (the server's scheduling without its HTTP)."""

from __future__ import annotations

import queue
from collections.abc import Iterator

from .engine import Engine, EngineError, Mode
from .outcomes import Event
from .outputs import GenerationOutput
from .sampling import SamplingParams
from .serve_request import Request, ServeConfig
from .serving import ServingLoop


def complete(engine: Engine, prompts: list[list[int]], params: SamplingParams, mode: Mode = "ar",
             batch: int = 16) -> Iterator[tuple[int, Event]]:
    """Answer many prompts (token ids) offline with continuous batching; yields (index, last event)
    in the order they finish."""
    loop = ServingLoop(engine, ServeConfig(max_running=batch, max_waiting=len(prompts) + 1)).start()
    done: queue.Queue = queue.Queue()
    try:
        for i, ids in enumerate(prompts):
            loop.submit(Request(params=params, emit=lambda ev, i=i: done.put((i, ev)) if ev.done else None,
                                input_ids=ids, mode=mode))
        for _ in prompts:
            yield done.get()
    finally:
        loop.stop()


def complete_all(engine: Engine, prompts: list[list[int]], params: SamplingParams, mode: Mode = "ar",
                 batch: int = 16) -> list[GenerationOutput]:
    """`complete`, collected in prompt order; the first failed answer raises."""
    out: list[GenerationOutput | None] = [None] * len(prompts)
    for i, ev in complete(engine, prompts, params, mode, batch):
        if ev.error:
            raise EngineError(f"prompt {i}: {ev.error}")
        out[i] = ev.result.output
    return out
