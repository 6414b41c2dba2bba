"""ComfyUI widgets generated from the core's settings table (``echomimic_core.settings``).

Defaults, bounds (min/max/choices) and tooltips are read from ``GenerationSettings``' field metadata,
so a node accepts what the CLI and ``GenerationSettings.validate`` accept; only presentation (step
sizes) and the "not set" value of a widget are decided here.
"""

from __future__ import annotations

from echomimic_core.settings import FIELDS, GenerationSettings, value_type, variant_defaults_text

AUTO = "auto"
SWITCH = {"on": True, "off": False}
# Widget step sizes (presentation only; defaults, bounds and help come from the settings table).
WIDGET_STEP = {
    "width": 16,
    "height": 16,
    "sample_area": 1024,
    "vae_tile_size": 8,
    "vae_tile_overlap": 8,
    "shift": 0.1,
    "fps": 0.01,
    "audio_context_seconds": 0.5,
    "redo_identity_below": 0.01,
    "easycache_threshold": 0.01,
}


def setting_widget(name: str, note: str = "") -> tuple[tuple, object]:
    """(ComfyUI input spec, the widget value meaning "not set") of setting ``name``.

    A setting whose default differs per variant gets an *auto* value (``auto``, or 0 / -1 for
    numbers: 0 where no real value is 0) that ``GenerationSettings.for_variant(model variant)``
    resolves; an optional setting (default None) gets 0 = that default. ``note`` is appended to
    the tooltip (what the setting means on this node).
    """
    spec, kind, bounds = FIELDS[name], value_type(name), GenerationSettings.bounds(name)
    help_text = spec.metadata["help"]
    tooltip = help_text[0].upper() + help_text[1:] + "." + (f" {note}" if note else "")
    per_variant = variant_defaults_text(name)
    if kind is bool or bounds.choices is not None:
        choices = ("on", "off") if kind is bool else bounds.choices
        if per_variant:
            return (
                [AUTO, *choices],
                {"default": AUTO, "tooltip": f"{tooltip} auto = the model variant's: {per_variant}."},
            ), AUTO
        if kind is bool:
            return ("BOOLEAN", {"default": spec.default, "tooltip": tooltip}), None
        return (list(choices), {"default": spec.default, "tooltip": tooltip}), None
    if per_variant:
        unset = -1.0 if kind is float else (0 if bounds.min >= 1 else -1)
        tooltip += f" {unset:g} = the model variant's: {per_variant}."
    elif spec.default is None:
        unset, tooltip = 0, tooltip + " 0 = that default."
    else:
        unset = None
    options = {
        "default": spec.default if unset is None else unset,
        "min": bounds.min if unset is None else unset,
        "max": bounds.max,
    }
    if name in WIDGET_STEP:
        options["step"] = WIDGET_STEP[name]
    elif kind is float:
        options.update(step=0.05, round=0.001)
    options["tooltip"] = tooltip
    return ("INT" if kind is int else "FLOAT", options), unset
