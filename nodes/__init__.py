"""ComfyUI nodes: thin adapters over echomimic_core. Filled in by the node-pack issue."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
