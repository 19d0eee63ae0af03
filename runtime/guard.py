"""Who may call `aspd serve`, and how much they may send: checked before any route runs.

A pure ASGI middleware (streams and disconnect detection pass through untouched): the API key
(`Authorization: Bearer KEY` on every route but /health, as SGLang's `--api-key`), the Host
header against the allowed hosts (a page in a browser cannot reach a loopback server through DNS
rebinding), and the body size, from Content-Length before anything is read and again while it
is read. Every refusal is one JSON error, like the API's own.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from dataclasses import dataclass

from starlette.exceptions import HTTPException

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "::1")
OPEN = ("/health",)  # answered without the key (load balancers probe it)


@dataclass(frozen=True)
class Access:
    api_keys: tuple[str, ...] = ()  # none: no key asked; several: each client's rids are its own
    allowed_hosts: tuple[str, ...] = ("*",)  # Host header names; "*" takes any
    max_body_bytes: int = 8 * 2**20

    @staticmethod
    def for_bind(host: str, api_keys: tuple[str, ...] = (), allowed_hosts: tuple[str, ...] = (),
                 max_body_bytes: int = 8 * 2**20) -> Access:
        """Bound to loopback, only loopback names by default; on other addresses any host (set the
        list to narrow it)."""
        if not allowed_hosts:
            allowed_hosts = LOOPBACK_HOSTS if _loopback(host) else ("*",)
        return Access(tuple(api_keys), tuple(allowed_hosts), max_body_bytes)


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(value: str) -> str:
    if value.startswith("["):  # [::1]:8000
        return value[1:value.find("]")]
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _reply(status: int, message: str, kind: str, headers: tuple = ()):
    body = json.dumps({"error": {"message": message, "type": kind, "code": status}}).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                         *headers]}
    return start, {"type": "http.response.body", "body": body}


class Guard:
    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    def refusal(self, scope) -> tuple[int, str, str, tuple] | None:
        """Why the request is refused, or None; sets `scope["state"]["principal"]`: which key it
        carries (its rids live apart from other keys' rids), None without keys."""
        a = self.access
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", ())}
        if "*" not in a.allowed_hosts and _host_name(headers.get("host", "")) not in a.allowed_hosts:
            return 403, "the Host header is not an allowed host (--allowed-hosts)", "permission_error", ()
        principal = None
        if a.api_keys:
            got = headers.get("authorization", "").encode()
            # every key is compared, so the time taken does not say which one nearly matched
            hits = [hmac.compare_digest(got, f"Bearer {k}".encode()) for k in a.api_keys]
            principal = hits.index(True) if any(hits) else None
            if principal is None and scope.get("path") not in OPEN:
                return (401, "a valid API key is required (Authorization: Bearer KEY)", "authentication_error",
                        ((b"www-authenticate", b"Bearer"),))
        scope.setdefault("state", {})["principal"] = principal
        size = headers.get("content-length")
        if size is not None and (not size.isdigit() or int(size) > a.max_body_bytes):
            return 413, f"the body is over {a.max_body_bytes} bytes (--max-body-bytes)", "invalid_request_error", ()
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refused = self.refusal(scope)
        if refused is not None:
            for msg in _reply(*refused):
                await send(msg)
            return
        limit, seen = self.access.max_body_bytes, 0

        async def bounded_receive():  # a chunked body has no Content-Length: count as it arrives
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
            return msg

        await self.app(scope, bounded_receive, send)


class BodyTooLarge(HTTPException):
    """An HTTP error, so the framework's body parsing passes it on as a 413 (any other exception
    there becomes a vague 400)."""

    def __init__(self, limit: int):
        super().__init__(413, f"the body is over {limit} bytes (--max-body-bytes)")
