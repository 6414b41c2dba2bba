#!/usr/bin/env bash
# The test command: set up (or reuse) the environment, then run the whole suite, slow tests
# included (a bare `python -m pytest` skips those for a quick local loop).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m pytest -q -m "slow or not slow" "$@"
