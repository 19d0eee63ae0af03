"""A non-editable install of this repository works on its own: a wheel built from the source, installed
into a fresh virtual environment, runs `aspd demo` with the adapter shipped inside the package (slow:
it loads the embedded model and decodes the demo answer).

Offline by construction: the wheel is built without build isolation (the test environment's
setuptools), and the fresh environment reaches the dependencies through a `.pth` file naming this
environment's site-packages. Python adds such a path without processing the `.pth` files inside it, so
this environment's editable install of aspd-lang stays invisible there: only the wheel provides
`aspd_cli`, `runtime` and the rest. The commands run outside the repository.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("aspd_cli", "aspd_lang", "bench", "runtime", "training")  # pyproject's packages.find
SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "results")  # bench/results: not packaged


def run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float) -> str:
    p = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(map(str, cmd))} exited {p.returncode}:\n{p.stdout}\n{p.stderr}"
    return p.stdout


def test_wheel_in_a_fresh_venv_runs_the_demo_with_its_own_shipped_adapter(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel offline needs setuptools in this environment")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1", NO_COLOR="1", COLUMNS="200")

    # 1. the wheel, from a copy of the source (no build/ or egg-info left in the repository)
    src = tmp_path / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, src / pkg, ignore=SKIP)
    wheels = tmp_path / "wheels"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels),
         str(src)], tmp_path, env, 300)
    (wheel,) = wheels.glob("aspd_lang-*.whl")

    # 2. a fresh venv with the wheel installed, then given this environment's dependencies (after the
    # install: pip would otherwise see this environment's aspd-lang as the same version, installed)
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env, 120)
    py = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "-q", str(wheel)],
        tmp_path, env, 300)
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                    tmp_path, env, 60).strip()).resolve()
    deps = dict.fromkeys(sysconfig.get_path(k) for k in ("purelib", "platlib"))
    (site / "_aspd_test_deps.pth").write_text("".join(f"{p}\n" for p in deps))

    # 3. the installed package is the one that runs, with its own copy of the adapter
    where = run([str(py), "-c", "import aspd_cli, runtime\nfrom runtime.model_loader import find_adapter\n"
                 "print(runtime.__file__); print(aspd_cli.__file__); print(find_adapter())"], tmp_path, env, 120)
    runtime_file, cli_file, adapter = (Path(x).resolve() for x in where.split())
    for f in (runtime_file, cli_file, adapter):
        assert f.is_relative_to(site), f"{f} is not the installed copy under {site}"
    assert (adapter / "adapter_config.json").exists() and (adapter / "adapter_model.safetensors").exists()

    # 4. `aspd demo` as a user runs it: the shipped adapter (the default), short answers; bfloat16 skips
    # `--dtype auto`'s timing runs, which an adapter at a new path would redo
    out = run([str(venv / "bin" / "aspd"), "demo", "--max-new-tokens", "160", "--dtype", "bfloat16"],
              tmp_path, env, 900)
    assert "ASPD: the model's own forks" in out, out  # the adapter's path, not the explicit-fork fallback
    blocks = re.search(r"\((\d+) parallel blocks", out)
    assert blocks and int(blocks.group(1)) >= 1, out
    branches = [int(n) for n in re.findall(r"parallel block: (\d+) branches", out)]
    assert branches and max(branches) >= 2, out
