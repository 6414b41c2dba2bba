"""Workflow JSON files shipped with the pack, and `python -m workflows.validate` to check them."""
