#!/usr/bin/env bash
# Creates (once) and activates the project's virtualenv. It lives in a cache directory
# outside the clone, keyed on the requirement files' hash, so a warm machine reuses it.
# Source it: `. scripts/env.sh`.
_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
_hash=$(cat "$_root/requirements.txt" "$_root/requirements-dev.txt" | sha256sum | cut -c1-16)
_venv="${ECHOMIMIC_VENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/echomimic-comfy}/venv-$_hash"
if [ ! -f "$_venv/.complete" ]; then
    echo "Setting up the environment in $_venv (first run downloads torch; later runs reuse it)" >&2
    rm -rf "$_venv"; mkdir -p "$(dirname "$_venv")"
    if ! { python3 -m venv "$_venv" && "$_venv/bin/python" -m pip install --upgrade pip \
           && "$_venv/bin/python" -m pip install -r "$_root/requirements-dev.txt"; } > "$_venv.log" 2>&1; then
        tail -n 40 "$_venv.log" >&2
        echo "Environment setup failed; full log: $_venv.log" >&2
        return 1 2>/dev/null || exit 1
    fi
    touch "$_venv/.complete"
fi
. "$_venv/bin/activate"
export PYTHONPATH="$_root${PYTHONPATH:+:$PYTHONPATH}"

