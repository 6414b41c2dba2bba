"""ComfyUI nodes: thin adapters over echomimic_core (classic node API, category "EchoMimicV3").

One module per node group; each exports its own NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS,
merged here. Importing this package registers the ``models/echomimic`` folder with ComfyUI.
"""

from . import audio, encoders, loaders, lora, masks, output, reference, sampler, task
from .comfy_services import register_model_folder

register_model_folder()

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
for _group in (loaders, lora, reference, encoders, audio, masks, task, sampler, output):
    NODE_CLASS_MAPPINGS.update(_group.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_group.NODE_DISPLAY_NAME_MAPPINGS)
