#!/usr/bin/env bash
# The test command: set up (or reuse) the environment, lint, then run the whole suite (slow tests
# included; a bare `python -m pytest` skips those for a quick local loop).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
ruff check --quiet .
ruff format --check --quiet .
python -m pytest -q -m "slow or not slow" "$@"
