#!/usr/bin/env bash
# Set up (or refresh) the environment, then run the demo on the embedded model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/aspd demo "$@"
