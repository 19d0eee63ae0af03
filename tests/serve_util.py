"""Start `aspd serve`'s app in this process (uvicorn in a thread) or as the real command (a subprocess),
and `aspd cluster` or SGLang's router over running workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

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
        stop(proc)


def tiny_model_dir(path: Path) -> Path:
    """The tests' tiny model (a vocabulary that can write JSON) saved as a model directory, for
    `aspd serve --model DIR` in a subprocess."""
    from tests.model_util import JSON_CHARS, tiny_model

    lm = tiny_model(max_positions=4096, chars=JSON_CHARS)
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@dataclass(frozen=True)
class Cluster:
    """`aspd cluster` as it reported itself: the router's URL and pid, each worker's URL and pid."""

    router: str
    router_pid: int
    workers: tuple[tuple[str, int], ...]
    cores: tuple[str, ...]  # each worker's cores ("0,1"), "shared" where it is not pinned
    proc: subprocess.Popen = field(repr=False)
    log: list[str] = field(repr=False)  # its stderr and its children's (workers, router), as it arrives


_LINE = re.compile(r"^(worker \d+|router): (\S+) \(pid (\d+)(?:, cores ([\d,]+))?")


def _pump(stream, sink: list[str]) -> None:
    for line in stream:
        sink.append(line)


def _endpoints(stream, found: dict[str, tuple[str, int, str]]) -> None:
    for line in stream:
        if m := _LINE.match(line):
            found[m[1]] = (m[2], int(m[3]), m[4] or "shared")


@contextlib.contextmanager
def cluster_command(*args: str, timeout: float = 180) -> Iterator[Cluster]:
    """`aspd cluster` as a user runs it; stopped with Ctrl-C (SIGINT) at the end, anything left killed."""
    proc = subprocess.Popen([sys.executable, "-m", "aspd_cli", "cluster", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    log: list[str] = []
    threading.Thread(target=_pump, args=(proc.stderr, log), daemon=True).start()
    found: dict[str, tuple[str, int, str]] = {}
    threading.Thread(target=_endpoints, args=(proc.stdout, found), daemon=True).start()
    try:
        t0 = time.time()
        while "router" not in found:
            if proc.poll() is not None or time.time() - t0 > timeout:
                raise RuntimeError(f"aspd cluster did not come up: {''.join(log)[-3000:]}")
            time.sleep(0.2)
        workers = [found[k] for k in sorted(found) if k.startswith("worker")]
        yield Cluster(found["router"][0], found["router"][1], tuple((u, pid) for u, pid, _ in workers),
                      tuple(cores for *_, cores in workers), proc, log)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        for _, pid, _ in found.values():  # children it failed to stop (it must not: the test checks)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def router_command(workers: list[str], policy: str, timeout: float = 60) -> Iterator[str]:
    """SGLang's router over running workers, on free loopback ports; yields its URL once every
    worker is registered and healthy."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *workers,
                             "--host", "127.0.0.1", "--port", str(port), "--policy", policy, "--prometheus-host",
                             "127.0.0.1", "--prometheus-port", str(free_port()), "--log-level", "warn"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            with contextlib.suppress(httpx.HTTPError):
                listed = httpx.get(url + "/workers", timeout=2).json().get("workers", [])
                if sum(w.get("is_healthy", False) for w in listed) == len(workers):
                    break
            if proc.poll() is not None or time.time() - t0 > timeout:
                raise RuntimeError("sglang-router did not come up")
            time.sleep(0.2)
        yield url
    finally:
        stop(proc)


def within(seconds: float, fn, *args):
    """fn(*args) on a thread: its value or its exception, or a failed test if it does not return in
    `seconds` (SGLang's HTTP client has no timeout, so a hang would block the suite)."""
    box: dict = {}

    def target():
        try:
            box["value"] = fn(*args)
        except BaseException as e:  # handed to the test
            box["error"] = e

    th = threading.Thread(target=target, daemon=True)
    th.start()
    th.join(seconds)
    assert not th.is_alive(), f"no answer within {seconds} s: the program hangs"
    if "error" in box:
        raise box["error"]
    return box["value"]


def stop(proc: subprocess.Popen) -> None:
    """End a started server: SIGTERM, then SIGKILL if it has not exited within 20 s."""
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
