"""LoRA node: a copy of the transformer with a LoRA file merged into its weights.

The loader's output is cached by ComfyUI and may feed other nodes, so the LoRA is merged into a
copy that shares every untouched weight with it: changing the strength and queueing again never
stacks LoRAs on the cached model, and the copy costs only the layers the LoRA changes.
"""

from __future__ import annotations

from . import comfy_services as services
from .common import CATEGORY, out_of_range

FOLDER = "loras"


class EchoMimicLoRA:
    """Merge a LoRA (from our trainer, kohya/ComfyUI or diffusers layouts) into the transformer."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("ECHOMIMIC_MODEL",),
                "lora": (services.list_models(FOLDER), {"tooltip": "LoRA file in models/loras."}),
                "strength": ("FLOAT", {"default": 1.0, "min": -4.0, "max": 4.0, "step": 0.05}),
            }
        }

    RETURN_TYPES = ("ECHOMIMIC_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, lora, strength=1.0):
        # named here so a NaN strength from an API prompt is refused (ComfyUI's check lets NaN through)
        return out_of_range(cls, {"strength": strength}) or services.missing_model(lora, FOLDER)

    def apply(self, model, lora, strength):
        from echomimic_core.checkpoints.lora import with_lora

        if strength == 0:
            return (model,)
        return (with_lora(model, services.model_path(lora, FOLDER), strength),)


NODE_CLASS_MAPPINGS = {"EchoMimicLoRA": EchoMimicLoRA}
NODE_DISPLAY_NAME_MAPPINGS = {"EchoMimicLoRA": "EchoMimicV3 LoRA"}
