"""`aspd`: the parser (one subparser per command module), the dispatch, and the one error handler:
a user error (`runtime.errors.UserError`, or invalid sampling parameters) is one line `error: ...`
and exit status 2; anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from runtime.errors import UserError

from . import bench, cluster, demo, generate, run, serve, training
from .common import err


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="aspd", description="Adaptive serial-parallel decoding")
    sub = ap.add_subparsers(dest="cmd", required=True)
    generate.add_parser(sub)
    demo.add_parser(sub)
    run.add_parser(sub)
    training.add_parsers(sub)
    bench.add_parser(sub)
    serve.add_parser(sub)
    cluster.add_parser(sub)
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: fail fast instead of waiting on the network
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ValidationError as e:
        first = e.errors()[0]
        err.print(f"[red]error:[/] invalid sampling parameter {'.'.join(map(str, first['loc']))}: {first['msg']}")
    except UserError as e:
        err.print(f"[red]error:[/] {e}")
    return 2


if __name__ == "__main__":
    sys.exit(main())
