#!/usr/bin/env bash
# The main job on a fresh machine: set up the environment, then generate a talking-head clip
# with the embedded tiny demo model (random weights: the video is noise, the path is real).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
python -m echomimic_core generate --demo --out "${1:-demo_output/demo.mp4}"
