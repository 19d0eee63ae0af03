"""What every route shares: the serving loop, the model's facts, and the plumbing from a validated
body to the loop and back (tokenize off the event loop, submit, relay events, cancel on disconnect).

`ServerState` lives on `app.state.server`; a route gets it as a parameter annotated `State`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from fastapi import Request as HttpRequest
from fastapi.responses import JSONResponse

from . import serving
from .api import BadRequest
from .engine import Engine
from .http_errors import refusal, status_of
from .outcomes import Event, Outcome
from .roles import RoleFormat, role_format
from .sampling import SamplingParams
from .serving import ServingLoop
from .vocab import token_texts

RID_SEP = "\x1f"  # around a key's index in the rids it owns (a control character no rid may hold)
DEFAULT_MAX_TOKENS = 128


class Pending:
    """A request's events, moved from the loop's thread onto the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop, self.queue = loop, asyncio.Queue()

    def emit(self, ev: Event) -> None:  # called on the serving loop's thread
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop is gone (shutdown)
            pass


def shown(text: str) -> str:
    """Rids as their owner wrote them (the key index taken out, also where a message shows the repr)."""
    parts = text.replace(repr(RID_SEP)[1:-1], RID_SEP).split(RID_SEP)
    return "".join(p for i, p in enumerate(parts) if i % 2 == 0)


def owned(http: HttpRequest, rid: str | None) -> str | None:
    """With several API keys, each key's rids live apart: no client can abort or join another's."""
    if rid is not None and RID_SEP in rid:
        raise BadRequest("rid: may not hold the control character U+001F")
    principal = getattr(http.state, "principal", None)
    return rid if rid is None or principal is None else f"{RID_SEP}{principal}{RID_SEP}{rid}"


def first_error(evs: list[Event]) -> JSONResponse | None:
    """The worst refusal among a batch's last events, answered; None if every one has a result."""
    bad = [e for e in evs if e.error is not None]
    if not bad:
        return None
    worst = max(bad, key=lambda e: status_of(e.outcome))
    return refusal(worst.outcome, worst.error)


def server_state(http: HttpRequest) -> ServerState:
    return http.app.state.server


@dataclass
class ServerState:
    loop: ServingLoop
    model_name: str
    defaults: SamplingParams  # their anti-loop settings apply where a request sets none
    roles: RoleFormat = field(init=False)  # the model's chat roles as text, for AspdEndpoint
    max_chars: int = field(init=False)  # no token is longer: a length check without a tokenizer

    def __post_init__(self) -> None:
        tok = self.engine.tok
        self.roles = role_format(tok)
        self.max_chars = self.engine.max_len * max(map(len, token_texts(tok)))

    @property
    def engine(self) -> Engine:
        return self.loop.engine

    def fits(self, text: str, where: str) -> None:
        if len(text) > self.max_chars:
            raise BadRequest(f"{where}: {len(text)} characters cannot fit the context window of "
                             f"{self.engine.max_len} tokens")

    async def new_request(self, pending: Pending, params: SamplingParams, text: str | None, ids: list[int] | None,
                          where: str = "text", **kw) -> serving.Request:
        """Text is tokenized here, in a worker thread: neither the event loop nor the engine waits on it."""
        vocab = self.engine.runner.vocab_size
        if ids is not None and any(not 0 <= t < vocab for t in ids):
            raise BadRequest(f"input_ids must be token ids in [0, {vocab})")
        tokens = ids
        if text is not None:
            self.fits(text, where)
            try:
                tokens = await asyncio.to_thread(self.engine.encode, text)
            except (UnicodeError, ValueError, TypeError) as e:
                raise BadRequest(f"{where}: cannot be tokenized: {e}") from None
        return serving.Request(params=params, emit=pending.emit, text=text, input_ids=ids, ids=list(tokens or ()),
                               **kw)

    @staticmethod
    async def next_event(http: HttpRequest, pending: Pending) -> Event | None:
        """The request's next event, or None once the client has gone away."""
        while True:
            try:
                return await asyncio.wait_for(pending.queue.get(), timeout=0.5)
            except TimeoutError:
                if await http.is_disconnected():
                    return None

    async def results(self, http: HttpRequest, reqs: list[serving.Request],
                      pendings: list[Pending]) -> list[Event] | None:
        """Submit, wait for every request's last event; None (all cancelled) if the client goes away.
        A batch enters `max_running` at a time, the next as each answer ends, so a batch larger than
        the queue still runs; the first error ends it (the rest are cancelled)."""
        window, sent = max(1, self.loop.config.max_running), 0
        out: list[Event] = []
        try:
            for i, p in enumerate(pendings):
                while sent < min(len(reqs), i + window):
                    self.loop.submit(reqs[sent])
                    sent += 1
                ev = await self.next_event(http, p)
                while ev is not None and not ev.done:
                    ev = await self.next_event(http, p)
                if ev is None:
                    return None
                out.append(ev)
                if ev.error is not None:
                    break
        finally:
            if len(out) < len(reqs) or out[-1].error is not None:  # gone, failed, or shutting down
                for r in reqs[:sent]:
                    self.loop.cancel(r)
        return out

    async def events(self, http: HttpRequest, req: serving.Request, pending: Pending) -> AsyncIterator[Event]:
        self.loop.submit(req)
        done = False
        try:
            while not done and (ev := await self.next_event(http, pending)) is not None:
                done = ev.done
                yield ev
        finally:
            if not done:
                self.loop.cancel(req)

    @staticmethod
    async def started(evs: AsyncIterator[Event]) -> AsyncIterator[Event] | JSONResponse:
        """Wait for a stream's first event: a request refused at once (400, 429) gets a plain error
        status instead of a 200 stream that carries the error."""
        try:
            first = await anext(evs)
        except StopAsyncIteration:
            return refusal(Outcome.CANCELLED, "the client went away")
        if first.error is not None:
            await evs.aclose()
            return first_error([first])

        async def chained() -> AsyncIterator[Event]:
            yield first
            async for ev in evs:
                yield ev
        return chained()

    async def stream(self, http: HttpRequest, req: serving.Request,
                     pending: Pending) -> AsyncIterator[Event] | JSONResponse:
        """One request's events as a stream, once it has started (`started`)."""
        return await self.started(self.events(http, req, pending))

    async def on_loop(self, fn):
        """`fn()` run on the serving loop's thread between steps."""
        return await asyncio.wrap_future(self.loop.call(fn))


State = Annotated[ServerState, Depends(server_state)]  # a route's parameter: the app's ServerState
