"""Command-line tools that work with a running ComfyUI server (e.g. `python -m tools.batch_run`)."""
