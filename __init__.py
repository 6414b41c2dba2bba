"""ComfyUI entry point of the EchoMimicV3 node pack (classic node API)."""

import os
import sys

# The core library is imported as ``echomimic_core``; ComfyUI does not put the pack folder on
# sys.path, so append it (appending, not prepending, so we never shadow ComfyUI's own modules).
_here = os.path.dirname(os.path.abspath(__file__))
if _here not in sys.path:
    sys.path.append(_here)

WEB_DIRECTORY = "./web"
__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]

# ComfyUI imports this folder as a package. pytest also imports this file (the repository root is a
# package to it), but as a lone module when the folder's name is no Python name
# ("ComfyUI-EchoMimicV3", git's "echomimic-v3-nodes"): there is no package to import from then.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: E402
