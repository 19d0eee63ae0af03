"""The house has floors: every import points down (lazy imports inside functions included).

    aspd_cli            the `aspd` command
    bench               benchmarks (may use training's extraction and model card)
    training            the adapter's data, training and calibration
    aspd_lang           the DSL, its executors and SGLang backends
    runtime             protocol, engine, server

Within runtime, `errors.py` and `protocol.py` (the one definition of the ASPD protocol) sit at the
bottom: they import nothing from the project but `runtime.errors`; `constraint.py`, the decoding
state machine over that protocol, nothing but `runtime.protocol`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOORS = ("aspd_cli", "bench", "training", "aspd_lang", "runtime")  # top to bottom
# the project modules each bottom module of runtime may import
LEAVES = {
    "runtime/errors.py": (),
    "runtime/protocol.py": ("runtime.errors",),
    "runtime/constraint.py": ("runtime.protocol",),
}


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """The project names `path` imports, as absolute dotted names (`from . import x` inside runtime
    gives `runtime.x`), each with its line."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package a relative import starts from (an __init__ is in its own)
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            names = [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        found += [(node.lineno, n) for n in names if n.split(".")[0] in FLOORS]
    return found


def upward(path: Path, root: Path = ROOT) -> list[str]:
    rel = path.relative_to(root).as_posix()
    floor = FLOORS.index(rel.split("/")[0])
    bad = []
    for line, name in imports(path, root):
        if FLOORS.index(name.split(".")[0]) < floor:
            bad.append(f"{rel}:{line}: imports {name} from a floor above")
        elif rel in LEAVES and not any(name == m or name.startswith(m + ".") for m in LEAVES[rel]):
            bad.append(f"{rel}:{line}: imports {name}, but {rel} is at the bottom of runtime")
    return bad


def _files() -> list[Path]:
    return sorted(p for pkg in FLOORS for p in (ROOT / pkg).rglob("*.py"))


def test_every_floor_is_a_package():
    assert all((ROOT / pkg / "__init__.py").exists() for pkg in FLOORS)


@pytest.mark.parametrize("path", _files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_upward_import(path):
    bad = upward(path)
    assert not bad, "\n".join(bad)


def test_the_check_sees_lazy_relative_and_bottom_imports(tmp_path):
    (tmp_path / "runtime").mkdir()
    f = tmp_path / "runtime" / "protocol.py"
    f.write_text("import json\nfrom .errors import UserError\n\n\ndef f():\n"
                 "    from aspd_cli.main import main\n    from . import engine\n    import bench.metrics\n")
    assert [n for _, n in imports(f, tmp_path)] == [
        "runtime.errors.UserError", "aspd_cli.main.main", "runtime.engine", "bench.metrics"]
    assert [b.split(": ", 1)[0] for b in upward(f, tmp_path)] == [
        "runtime/protocol.py:6", "runtime/protocol.py:7", "runtime/protocol.py:8"]
    g = tmp_path / "runtime" / "engine.py"
    g.write_text("from runtime.protocol import parse\nfrom aspd_lang import ir\n")
    assert upward(g, tmp_path) == ["runtime/engine.py:2: imports aspd_lang.ir from a floor above"]
