"""Streaming a program run: the events a run reports as it goes, and the iterator / async views.

    for ev in tips.stream(topic="tea", backend="engine"):
        if ev.kind == "text":
            print(ev.text, end="", flush=True)        # a gen's new text, token by token
        elif ev.kind == "branch":
            print(f"[{ev.title}: {ev.tokens} tokens]")  # a branch's progress
        elif ev.kind == "finished":
            result = ev.result                          # the RunResult, as `run` returns it

What each backend reports: `engine` streams every gen token by token (`text`) and every branch's
token count each step (`branch`, program blocks and the model's own blocks alike); `native` and
`sglang` run SGLang's interpreter, which hands a gen over whole, so they report each gen and select
as it finishes (`value`, with its branch) and each program branch as it ends (`branch`). Every
backend ends with `value` events for every variable and one `finished`.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict


class _Event(BaseModel):
    model_config = ConfigDict(frozen=True)


class TextDelta(_Event):
    """New text of gen `var` (engine backend)."""

    kind: Literal["text"] = "text"
    var: str
    text: str


class BranchProgress(_Event):
    """A branch's tokens so far (`done`: it has ended). `var` is the gen it decodes."""

    kind: Literal["branch"] = "branch"
    var: str
    branch: int
    title: str
    tokens: int
    done: bool = False


class ValueDone(_Event):
    """A gen or select finished with `value` (in branch `branch`, titled `title`, if in a block)."""

    kind: Literal["value"] = "value"
    var: str
    value: str
    branch: int | None = None
    title: str | None = None


class Finished(_Event):
    kind: Literal["finished"] = "finished"
    result: Any  # RunResult


Event = TextDelta | BranchProgress | ValueDone | Finished
OnEvent = Callable[[Event], None]

_END = object()


def _in_thread(run: Callable[[OnEvent], Any], put: Callable[[Any], None]) -> None:
    """run(on_event) on a thread: its events, then Finished (or the exception), then the end mark."""
    def target() -> None:
        try:
            put(Finished(result=run(put)))
        except BaseException as e:  # handed to the consumer, raised there
            put(e)
        put(_END)

    threading.Thread(target=target, daemon=True, name="aspd-stream").start()


def iterate(run: Callable[[OnEvent], Any]) -> Iterator[Event]:
    """The events of run(on_event) as an iterator; an error of the run is raised by the iterator."""
    import queue

    q: queue.Queue = queue.Queue()
    _in_thread(run, q.put)
    while (item := q.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item


async def aiterate(run: Callable[[OnEvent], Any]) -> AsyncIterator[Event]:
    """The same as an async iterator: the run decodes on a thread, the event loop stays free."""
    loop = asyncio.get_running_loop()
    q: asyncio.Queue = asyncio.Queue()
    _in_thread(run, lambda item: loop.call_soon_threadsafe(q.put_nowait, item))
    while (item := await q.get()) is not _END:
        if isinstance(item, BaseException):
            raise item
        yield item
