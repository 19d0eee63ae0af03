"""The server's one error shape (OpenAI's), and the one place where outcomes become HTTP statuses.

The serving loop ends every request with an `Outcome`; `status_of` says which status code each is
given, `refusal` answers one, `refusal_body` writes one into a stream.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from .outcomes import Outcome

RETRY_AFTER_S = 1  # what a 429 asks the client to wait: a queue slot frees at every finished request

STATUS = {
    Outcome.DONE: 200,
    Outcome.INVALID: 400,
    Outcome.NOT_FOUND: 404,
    Outcome.REJECTED: 429,  # with Retry-After
    Outcome.CANCELLED: 499,  # nginx's "client closed request": nobody reads it, but it is logged right
    Outcome.FAILED: 500,
}


def status_of(outcome: Outcome) -> int:
    return STATUS[outcome]


def error_body(status: int, message: str, kind: str | None = None) -> dict:
    """The one error shape (OpenAI's), in replies and in streams: 5xx are `server_error`, 429
    `rate_limit_error`."""
    kind = kind or ("server_error" if status >= 500 else "rate_limit_error" if status == 429 else
                    "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": status}}


def error(status: int, message: str, kind: str | None = None) -> JSONResponse:
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 429 else None
    return JSONResponse(error_body(status, message, kind), status_code=status, headers=headers)


def _kind(outcome: Outcome) -> str | None:
    return "not_found_error" if outcome is Outcome.NOT_FOUND else None  # the rest: by status


def refusal(outcome: Outcome, message: str) -> JSONResponse:
    """A request that ended without a result, answered."""
    return error(status_of(outcome), message, _kind(outcome))


def refusal_body(outcome: Outcome, message: str) -> dict:
    """The same, as the last event of a stream that had begun."""
    return error_body(status_of(outcome), message, _kind(outcome))
