#!/usr/bin/env bash
# The test command: set up (or reuse) the environment, then run the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m pytest -q "$@"
