"""`aspd cluster`: N `aspd serve` workers behind SGLang's own router (`sglang-router`), on loopback.

    aspd cluster --workers 2                      # router on :30000, workers on :30001, :30002
    aspd cluster --workers 2 -- --dtype int8      # after `--`: flags for every `aspd serve`

Each worker is a plain `aspd serve` subprocess, pinned to its own share of the cores (two workers
on one core set would fight over it); the router is `python -m sglang_router.launch_router` over
their URLs, started once every worker answers /health. The command prints where each listens
(`worker N: URL (pid P, cores C)`, `router: URL ...`) and runs until Ctrl-C or SIGTERM, then stops
the router (no new requests) and the workers. If the router exits, everything stops; a worker that
exits is routed around by the router and reported here.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .common import UsageError, add_model_args, err

POLICIES = ("cache_aware", "round_robin", "random", "power_of_two", "manual")
STARTUP_S = 600  # a worker loads its model (and may measure its weight formats) before it answers


def add_parser(sub) -> None:
    c = sub.add_parser("cluster", help="N `aspd serve` workers behind sglang-router, on loopback")
    c.add_argument("--workers", type=int, default=2)
    c.add_argument("--host", default="127.0.0.1", help="the router's and the workers' address")
    c.add_argument("--port", type=int, default=30000, help="the router's port (clients use this one)")
    c.add_argument("--worker-port", type=int, default=None,
                   help="the first worker's port, the next ones follow (default: --port + 1; 0: free ports)")
    c.add_argument("--metrics-port", type=int, default=0, help="the router's Prometheus port (default: a free one)")
    c.add_argument("--policy", choices=POLICIES, default="cache_aware",
                   help="the router's policy; cache_aware sends a fork's requests to the worker that has their prefix")
    c.add_argument("--no-pin", action="store_true", help="do not give each worker its own cores")
    c.add_argument("--router-args", default="", help="more sglang-router flags, one string (shell quoting)")
    add_model_args(c)
    c.add_argument("serve_args", nargs=argparse.REMAINDER, help="after `--`: flags for every `aspd serve`")
    c.set_defaults(func=cmd_cluster)


@dataclass(frozen=True)
class Plan:
    """What to start: the router's and each worker's port, each worker's cores, the commands."""

    host: str
    port: int
    metrics_port: int
    worker_ports: tuple[int, ...]
    cores: tuple[tuple[int, ...] | None, ...]  # per worker; None: not pinned
    serve_args: tuple[str, ...]
    router_args: tuple[str, ...] = field(default=())
    policy: str = "cache_aware"

    def url(self, port: int) -> str:
        return f"http://{self.host}:{port}"

    def worker_cmd(self, port: int) -> list[str]:
        return [sys.executable, "-m", "aspd_cli", "serve", "--host", self.host, "--port", str(port), *self.serve_args]

    def router_cmd(self) -> list[str]:
        return [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls",
                *(self.url(p) for p in self.worker_ports), "--host", self.host, "--port", str(self.port),
                "--policy", self.policy, "--prometheus-host", self.host, "--prometheus-port", str(self.metrics_port),
                # a dead worker leaves the rotation within seconds (the default checks once a minute), and
                # before that two refused connections open its circuit, so the router's retries of the same
                # request go to a live worker (at the default 10, a request's five retries all hit the dead one)
                "--health-check-interval-secs", "2", "--health-failure-threshold", "2",
                "--cb-failure-threshold", "2", "--cb-timeout-duration-secs", "10", "--log-level", "warn",
                *self.router_args]


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def split_cores(cores: list[int], n: int) -> list[tuple[int, ...] | None]:
    """Disjoint core sets, one per worker (the remainder to the first ones); none if there are fewer
    cores than workers."""
    if n > len(cores):
        return [None] * n
    k, extra = divmod(len(cores), n)
    out, i = [], 0
    for w in range(n):
        size = k + (w < extra)
        out.append(tuple(cores[i:i + size]))
        i += size
    return out


def plan(args: argparse.Namespace) -> Plan:
    if args.workers < 1:
        raise UsageError("--workers must be >= 1")
    if importlib.util.find_spec("sglang_router") is None:
        raise UsageError("aspd cluster needs SGLang's router: pip install 'aspd-lang[router]' (sglang-router)")
    serve = [a for a in args.serve_args if a != "--"]
    for flag in ("--host", "--port"):
        if flag in serve:
            raise UsageError(f"{flag} is aspd cluster's own flag: each worker gets its port from --worker-port")
    model = [x for flag, v, default in (("--model", args.model, None), ("--adapter", args.adapter, "auto"),
                                        ("--dtype", args.dtype, "auto"), ("--attention", args.attention, "auto"))
             if v != default for x in (flag, v)]
    first = args.port + 1 if args.worker_port is None else args.worker_port
    ports = [free_port(args.host) if first == 0 else first + i for i in range(args.workers)]
    if args.port in ports or len(set(ports)) < len(ports):
        raise UsageError("the router's and the workers' ports must differ")
    for port in (args.port, *ports):  # else another server there could pass for a worker
        if not _bindable(args.host, port):
            raise UsageError(f"port {port} on {args.host} is in use (--port, --worker-port)")
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    pins = [None] * args.workers if args.no_pin or not cores else split_cores(cores, args.workers)
    return Plan(args.host, args.port, args.metrics_port or free_port(args.host), tuple(ports), tuple(pins),
                tuple(model + serve), tuple(shlex.split(args.router_args)), args.policy)


def _child_setup(cores: tuple[int, ...] | None) -> Callable[[], None]:
    def setup() -> None:  # in the child, before exec: its cores, and it dies with this process
        if cores:
            os.sched_setaffinity(0, cores)
        with contextlib.suppress(Exception):
            import ctypes

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    return setup


def _start(cmd: list[str], cores: tuple[int, ...] | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if cores:
        env["OMP_NUM_THREADS"] = str(len(cores))
    # own session: a terminal's Ctrl-C reaches this process only, which stops the router first
    return subprocess.Popen(cmd, stdout=sys.stderr, stderr=sys.stderr, stdin=subprocess.DEVNULL, env=env,
                            preexec_fn=_child_setup(cores), start_new_session=True)


def _get(url: str, timeout: float = 2.0):
    import httpx

    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url, timeout=timeout)
    return None


def _wait(what: str, procs: list[subprocess.Popen], ready: Callable[[], bool], timeout: float) -> None:
    t0 = time.monotonic()
    while not ready():
        for p in procs:
            if p.poll() is not None:
                raise UsageError(f"{what}: {shlex.join(p.args[1:4])} exited with status {p.returncode} "
                                 "before it was ready (its output is above)")
        if time.monotonic() - t0 > timeout:
            raise UsageError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.25)


def stop(procs: list[subprocess.Popen], timeout: float = 10) -> None:
    """SIGTERM each (uvicorn and the router drain and exit), then SIGKILL what is left: router and
    workers in turn stay well within a service manager's stop timeout."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def cmd_cluster(args: argparse.Namespace) -> int:
    pl = plan(args)
    workers: list[subprocess.Popen] = []
    router: subprocess.Popen | None = None
    signal.signal(signal.SIGTERM, _interrupt)  # a service manager's stop: the same clean shutdown
    signal.signal(signal.SIGINT, _interrupt)  # Ctrl-C, even when started in the background (which ignores it)
    try:
        workers = [_start(pl.worker_cmd(p), c) for p, c in zip(pl.worker_ports, pl.cores)]

        def healthy() -> bool:
            return all((r := _get(pl.url(p) + "/health")) is not None and r.status_code == 200
                       for p in pl.worker_ports)

        with err.status(f"starting {len(workers)} workers..."):
            _wait("a worker", workers, healthy, STARTUP_S)
        router = _start(pl.router_cmd())

        def routed() -> bool:  # every worker registered and healthy (the router's own list)
            r = _get(pl.url(pl.port) + "/workers")
            return r is not None and r.status_code == 200 and \
                sum(w.get("is_healthy", False) for w in r.json().get("workers", [])) == len(workers)

        _wait("the router", [router], routed, 60)
        for i, (w, port, cores) in enumerate(zip(workers, pl.worker_ports, pl.cores), start=1):
            pin = f", cores {','.join(map(str, cores))}" if cores else ""
            print(f"worker {i}: {pl.url(port)} (pid {w.pid}{pin})", flush=True)
        print(f"router: {pl.url(pl.port)} (pid {router.pid}, policy {pl.policy}, "
              f"metrics {pl.url(pl.metrics_port)}/metrics)", flush=True)
        err.print(f"[green]ready[/]: aspd run PROGRAM.py --backend sglang --url {pl.url(pl.port)}; Ctrl-C stops")
        gone: set[int] = set()
        while router.poll() is None:
            for i, w in enumerate(workers, start=1):
                if w.poll() is not None and i not in gone:
                    gone.add(i)
                    err.print(f"[yellow]worker {i} exited[/] (status {w.returncode}); the router routes around it")
            time.sleep(0.5)
        err.print(f"[red]error:[/] the router exited (status {router.returncode}); stopping the workers")
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C does not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        stop([router] if router is not None else [])  # first: no request reaches a stopping worker
        stop(workers)
        err.print("aspd cluster: stopped")
