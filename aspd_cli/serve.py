"""`aspd serve`: the model over SGLang's and OpenAI's HTTP APIs (uvicorn).

The serving loop's limits default to `runtime.serving.ServeConfig`'s (their one definition): a flag
left out is a field left at its default."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from runtime.sampling import anti_loop_args, anti_loop_from, structure_args, structure_from

from .common import UsageError, add_model_args, err, load_engine

if TYPE_CHECKING:
    from runtime.serving import ServeConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 30000
DEFAULT_URL = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"  # what clients (`aspd run --backend sglang`) talk to
# flag dest -> ServeConfig field
LIMITS = {"max_running": "max_running", "max_queue": "max_waiting", "cache_tokens": "cache_tokens",
          "max_sessions": "max_sessions", "session_tokens": "session_tokens", "prefill_chunk": "prefill_chunk",
          "prefill_share": "prefill_share"}


def add_parser(sub) -> None:
    sv = sub.add_parser("serve", help="serve the model over SGLang's and OpenAI's HTTP APIs")
    add_model_args(sv)
    sv.add_argument("--host", default=DEFAULT_HOST, help="default: loopback only")
    sv.add_argument("--port", type=int, default=DEFAULT_PORT)
    sv.add_argument("--max-running", type=int, help="requests decoded together (one forward per step)")
    sv.add_argument("--max-queue", type=int, help="waiting requests beyond this get 429")
    sv.add_argument("--cache-tokens", type=int, help="radix prefix cache budget; 0 turns it off")
    sv.add_argument("--max-sessions", type=int, help="held rid sessions (for joins), LRU")
    sv.add_argument("--session-tokens", type=int, help="tokens of KV the held sessions may keep, LRU")
    sv.add_argument("--prefill-chunk", type=int,
                    help="prompt tokens per forward (long prompts interleave with running decodes)")
    sv.add_argument("--prefill-share", type=float,
                    help="while others decode, the share of time prompt chunks may take (0-1]")
    sv.add_argument("--api-key", action="append", default=None,
                    help="require 'Authorization: Bearer KEY' on every route but /health; repeat for several "
                    "clients, each with its own rids (env ASPD_API_KEY, comma-separated)")
    sv.add_argument("--allowed-hosts", default="", help="comma-separated Host names accepted "
                    "(default: loopback names when bound to loopback, any otherwise)")
    sv.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="larger request bodies get 413")
    anti_loop_args(sv)  # for requests that set none (SGLang's frontend never does)
    structure_args(sv)
    sv.set_defaults(func=cmd_serve)


def serve_config(args: argparse.Namespace) -> ServeConfig:
    """The serving loop's limits: the flags given, ServeConfig's defaults for the rest, checked."""
    from runtime.serving import ServeConfig

    c = ServeConfig(**{field: getattr(args, flag) for flag, field in LIMITS.items() if getattr(args, flag) is not None})
    if min(c.max_waiting, c.cache_tokens, c.max_sessions, c.session_tokens) < 0 or \
            min(c.max_running, c.prefill_chunk) < 1 or not 0 < c.prefill_share <= 1:
        raise UsageError("--max-running and --prefill-chunk must be >= 1, --prefill-share in (0, 1]; --max-queue, "
                         "--cache-tokens, --max-sessions and --session-tokens >= 0")
    return c


def cmd_serve(args: argparse.Namespace) -> int:
    import logging

    import uvicorn

    from runtime.guard import Access
    from runtime.sampling import SamplingParams
    from runtime.server import create_app
    from runtime.serving import ServingLoop

    config = serve_config(args)
    defaults = SamplingParams(**anti_loop_from(args), **structure_from(args))  # checked before the model loads
    eng = load_engine(args)
    loop = ServingLoop(eng, config).start()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    err.print(f"aspd serve: {eng.loaded.name} on http://{args.host}:{args.port} "
              f"(max running {config.max_running}, queue {config.max_waiting}, "
              f"prefix cache {config.cache_tokens} tokens)")
    try:
        keys = tuple(args.api_key or [k for k in os.environ.get("ASPD_API_KEY", "").split(",") if k])
        access = Access.for_bind(args.host, keys, tuple(h for h in args.allowed_hosts.split(",") if h),
                                 args.max_body_bytes)
        app = create_app(loop, eng.loaded.name, defaults, access)
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning", http=http1_protocol())
    finally:
        loop.stop()
    return 0


def http1_protocol():
    """uvicorn's HTTP/1.1 protocol, closing an HTTP/2 connection preface quietly instead of logging
    "Invalid HTTP request received": sglang-router sends one to every worker it registers (it probes
    for gRPC first). Any other malformed request is still logged."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Http1(H11Protocol):
        def data_received(self, data: bytes) -> None:
            if data.startswith(b"PRI * HTTP/2.0"):
                self.transport.close()
                return
            super().data_received(data)

    return Http1
