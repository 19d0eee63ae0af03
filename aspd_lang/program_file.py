"""A program file: `main` (an `@program`), `ARGS` (default arguments: strings, or lists and numbers
that shape the program, see `Program.ir`) and optionally `batch(**ARGS)` returning a list of
argument sets to run `main` with. Loading checks `main` before anything heavy is imported.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import ir
from .dsl import DataArgument, Program


@dataclass(frozen=True)
class ProgramFile:
    path: Path
    main: Program
    args: dict[str, Any]
    batch: Any | None
    doc: str


def load_program_file(path: str | Path) -> ProgramFile:
    path = Path(path)
    if not path.is_file():
        raise ir.ProgramError(f"no program file {path}")
    spec = importlib.util.spec_from_file_location(f"aspd_program_{path.stem}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    main = getattr(mod, "main", None)
    if not isinstance(main, Program):
        raise ir.ProgramError(f"{path} must define `main`, an @program")
    args = dict(getattr(mod, "ARGS", {}))
    try:
        main.ir()  # check it before anything runs
    except DataArgument:  # its structure comes from its arguments: check it with the file's defaults
        if set(main.params) - set(args):
            raise
        main.ir(**{p: args[p] for p in main.params})
    return ProgramFile(path, main, args, getattr(mod, "batch", None),
                       (mod.__doc__ or "").strip().split("\n")[0])
