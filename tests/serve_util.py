"""Start `aspd serve`'s app in this process (uvicorn in a thread) or as the real command (a subprocess)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from runtime.engine import Engine
from runtime.guard import Access
from runtime.sampling import SamplingParams
from runtime.server import create_app
from runtime.serving import ServeConfig, ServingLoop

PLAIN = SamplingParams(repetition_penalty=1.0, no_repeat_ngram_size=0)  # the server's defaults in tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def info(url: str) -> dict:
    """The serving loop's counters, from `/server_info`."""
    return httpx.get(url + "/server_info", timeout=30).json()["internal_states"][0]


def idle(url: str, timeout: float = 30) -> dict:
    """Wait until nothing runs or waits and only held sessions stay live; their counters."""
    t0 = time.time()
    while True:
        s = info(url)
        if s["running"] == 0 and s["waiting"] == 0 and s["live_sequences"] == s["sessions"]:
            return s
        assert time.time() - t0 < timeout, s
        time.sleep(0.05)


@contextlib.contextmanager
def serve_in_thread(engine: Engine, defaults: SamplingParams = PLAIN, access: Access | None = None,
                    **config) -> Iterator[tuple[str, ServingLoop]]:
    loop = ServingLoop(engine, ServeConfig(**config)).start()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(loop, "tiny", defaults, access), host="127.0.0.1", port=port,
                                           log_level="warning"))
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    while not server.started:
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}", loop
    finally:
        server.should_exit = True
        th.join(timeout=10)
        loop.stop()


@contextlib.contextmanager
def serve_command(*args: str, timeout: float = 180) -> Iterator[tuple[str, int]]:
    """`aspd serve` as a user runs it, on a free loopback port; yields its URL and process id."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "aspd_cli", "serve", "--port", str(port), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"aspd serve exited: {proc.stdout.read()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            if time.time() - t0 > timeout:
                raise RuntimeError("aspd serve did not come up")
            time.sleep(0.5)
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
