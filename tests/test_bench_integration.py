"""`aspd bench` and the device check script on the real embedded model (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_aspd_bench_cli_on_the_embedded_model(tmp_path):
    from aspd_cli.main import main

    out = tmp_path / "b"
    assert main(["bench", "--limit", "1", "--systems", "ar,aspd", "--max-new-tokens", "24", "--out", str(out)]) == 0
    s = json.loads((out / "summary.json").read_text())
    shipped = ROOT / "runtime" / "adapters" / "smollm2-135m-aspd"
    calibrated = json.loads((shipped / "aspd_calibration.json").read_text())["fork_bias"]
    assert s["meta"]["adapter"] == "runtime/adapters/smollm2-135m-aspd" and s["meta"]["fork_bias"] == calibrated
    assert s["meta"]["reference"] == "base-ar"  # no hf: the engine's base-model answers are the reference
    assert set(s["systems"]) == {"ar", "aspd"} and s["systems"]["ar"]["speedup_vs_ar"]["mean"] == 1.0
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert {r["system"] for r in rows} == {"ar", "aspd", "base-ar"}
    assert all(r["completion_tokens"] > 0 and r["quality"]["loss"] > 0 for r in rows)


def test_device_check_runs_its_cpu_dry_run(tmp_path):
    out = tmp_path / "dc.json"
    r = subprocess.run([sys.executable, str(ROOT / "bench" / "device_check.py"), "--cpu-dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(out.read_text())
    assert rep["backends"] == ["sdpa", "cascade"] and all(c["ok"] for c in rep["correctness"])
    assert set(rep["step_ms"]["cascade"]) == {"1", "2", "4"}
    assert "step ms" in r.stdout.splitlines()[-3]
