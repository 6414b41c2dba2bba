"""The one adapter between the node pack and ComfyUI's services.

Everything the nodes need from ComfyUI (model folders, progress bar with previews, the Cancel
button, devices, cache release, output/temp folders) goes through here, so that nodes and tests
run unchanged without ComfyUI. Each service looks ComfyUI up at call time: inside ComfyUI the real
service is used; outside it a plain fallback is:

=====================  ==============================================  ============================
service                ComfyUI                                         fallback
=====================  ==============================================  ============================
model folders          ``folder_paths`` (``echomimic`` folder          ``ECHOMIMIC_MODELS_DIR`` (or
                       registered under ``models_dir``)                ``./models/echomimic``);
                                                                       other folders are siblings
progress               ``comfy.utils.ProgressBar`` (+ preview image)   none
interrupt              ``comfy.model_management``                      never interrupted
devices                ``get_torch_device`` / ``unet_offload_device``  cuda if available, else cpu
                       / ``intermediate_device``
cache release          ``soft_empty_cache``                            ``torch.cuda.empty_cache``
output / temp / input  ``folder_paths.get_*_directory``                ``ECHOMIMIC_OUTPUT_DIR`` ...
VIDEO                  ``comfy_api.input_impl.VideoFromFile`` /        ``FileVideo`` (an mp4 path)
                       ``VideoFromComponents``
=====================  ==============================================  ============================
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
import weakref
from pathlib import Path
from types import ModuleType
from typing import Any

log = logging.getLogger(__name__)

FOLDER_NAME = "echomimic"
# What our checkpoint reader accepts (echomimic_core.checkpoints.files) plus ComfyUI's ".pt2".
MODEL_EXTENSIONS = frozenset({".safetensors", ".sft", ".pth", ".pt", ".pt2", ".bin", ".ckpt"})
# ComfyUI's default --preview-size; the progress hook wants (format, PIL image, max size).
PREVIEW_MAX_SIZE = 512

_missing: set[str] = set()


def _module(name: str) -> ModuleType | None:
    """ComfyUI module ``name`` if we run inside ComfyUI, else None (a failed import is remembered)."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    if name in _missing:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        _missing.add(name)
        return None


# ------------------------------------------------------------------------------------------------
# Model folders
# ------------------------------------------------------------------------------------------------
def _fallback_dir(folder: str) -> Path:
    """Outside ComfyUI: ``folder``'s models (or "output", "temp", "input") from the environment."""
    env = {"output": "ECHOMIMIC_OUTPUT_DIR", "temp": "ECHOMIMIC_TEMP_DIR", "input": "ECHOMIMIC_INPUT_DIR"}
    if folder in env:
        if os.environ.get(env[folder]):
            return Path(os.environ[env[folder]])
        if folder == "temp":
            return Path(tempfile.gettempdir()) / "echomimic"
        return Path.cwd() / folder
    models = Path(os.environ.get("ECHOMIMIC_MODELS_DIR") or Path.cwd() / "models" / FOLDER_NAME)
    # ComfyUI keeps vae/, clip_vision/, ... beside echomimic/ under models/; mirror that layout.
    return models if folder == FOLDER_NAME else models.parent / folder


def register_model_folder() -> None:
    """Register ``models/echomimic`` with ComfyUI, listing only model files.

    Paths a user already added for ``echomimic`` in extra_model_paths.yaml (parsed before custom
    nodes load) are kept after the default one, as ComfyUI orders its own folders. Without an
    explicit extension set ComfyUI would list every file (json, txt ...) in the combo.
    """
    fp = _module("folder_paths")
    if fp is None:
        return
    default = os.path.join(fp.models_dir, FOLDER_NAME)
    existing, _ = fp.folder_names_and_paths.get(FOLDER_NAME, ([], set()))
    paths = [default] + [p for p in existing if os.path.normpath(p) != os.path.normpath(default)]
    fp.folder_names_and_paths[FOLDER_NAME] = (paths, set(MODEL_EXTENSIONS))
    cache = getattr(fp, "filename_list_cache", None)
    if isinstance(cache, dict):
        cache.pop(FOLDER_NAME, None)
    try:
        os.makedirs(default, exist_ok=True)
    except OSError as e:  # a read-only install still works with extra_model_paths.yaml
        log.warning("could not create %s (%s); add an 'echomimic:' entry to extra_model_paths.yaml", default, e)


def list_models(folder: str = FOLDER_NAME) -> list[str]:
    """Model files in ``folder`` as relative paths with '/' (what a combo widget shows), sorted."""
    fp = _module("folder_paths")
    if fp is not None:
        return list(fp.get_filename_list(folder))
    root = _fallback_dir(folder)
    if not root.is_dir():
        return []
    return sorted(
        p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.suffix.lower() in MODEL_EXTENSIONS
    )


def model_path(name: str, folder: str = FOLDER_NAME) -> Path:
    """Absolute path of the model file ``name`` (as listed by :func:`list_models`) in ``folder``."""
    fp = _module("folder_paths")
    if fp is not None:
        return Path(fp.get_full_path_or_raise(folder, name))
    root = _fallback_dir(folder).resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise ValueError(
            f"model name {name!r} points outside the {folder!r} folder {root}; pick a file listed in the node's combo."
        )
    if not path.is_file():
        raise FileNotFoundError(
            f"model {name!r} not found in the {folder!r} folder {root}. Put the file there or set "
            f"ECHOMIMIC_MODELS_DIR (the echomimic folder; other folders are its siblings)."
        )
    return path


def find_model(name: str, folders: tuple[str, ...]) -> Path:
    """:func:`model_path` of ``name`` in the first of ``folders`` that holds it; the error names them all."""
    errors = []
    for folder in folders:
        try:
            return model_path(name, folder)
        except (FileNotFoundError, ValueError) as e:
            errors.append(str(e))
    raise FileNotFoundError(" / ".join(errors))


def missing_model(name: str, *folders: str) -> str | bool:
    """A VALIDATE_INPUTS answer for a model combo: True, or why ``name`` cannot be loaded."""
    try:
        find_model(name, folders)
    except FileNotFoundError as e:
        return str(e)
    return True


# ------------------------------------------------------------------------------------------------
# Output / temp / input folders
# ------------------------------------------------------------------------------------------------
def _directory(kind: str) -> Path:
    fp = _module("folder_paths")
    if fp is not None:
        return Path(getattr(fp, f"get_{kind}_directory")())
    path = _fallback_dir(kind)
    path.mkdir(parents=True, exist_ok=True)
    return path


def output_dir() -> Path:
    return _directory("output")


def temp_dir() -> Path:
    return _directory("temp")


def input_dir() -> Path:
    return _directory("input")


def next_output_file(prefix: str, extension: str, temp: bool = False) -> tuple[Path, str, str]:
    """A new file for a save node: ``(path, subfolder, filename)``; ``prefix`` may hold sub-folders.

    Names follow ComfyUI's ``{prefix}_{counter:05}_.{ext}`` so files sort with the user's images.
    The ``(filename, subfolder)`` pair is what a ``{"ui": ...}`` result and ``/view`` expect.
    """
    base = temp_dir() if temp else output_dir()
    fp = _module("folder_paths")
    if fp is not None:
        folder, name, counter, subfolder, _ = fp.get_save_image_path(prefix, str(base))
        folder = Path(folder)
    else:
        sub, _, name = prefix.replace("\\", "/").rpartition("/")
        folder = (base / sub).resolve()
        if base.resolve() not in folder.parents and folder != base.resolve():
            raise ValueError(
                f"filename_prefix {prefix!r} leaves the output folder {base}; "
                "use a relative prefix such as 'echomimic/clip'."
            )
        folder.mkdir(parents=True, exist_ok=True)
        pattern = re.compile(re.escape(name) + r"_(\d+)_?\.")
        counters = [int(m.group(1)) for f in folder.iterdir() if (m := pattern.match(f.name))]
        counter, subfolder = max(counters, default=0) + 1, sub
    filename = f"{name}_{counter:05}_.{extension.lstrip('.')}"
    return folder / filename, subfolder, filename


def run_output_file(prefix: str, run_key: str, extension: str) -> tuple[Path, str, str]:
    """The output file of one run: ``{prefix}_{run_key}.{ext}`` (not a counter), so the same
    generation queued again finds the parts a killed run left beside it and resumes."""
    path, subfolder, filename = next_output_file(prefix, extension)
    name = re.sub(r"_\d+_\.[^.]+$", "", filename)
    filename = f"{name}_{run_key}.{extension.lstrip('.')}"
    return path.with_name(filename), subfolder, filename


# ------------------------------------------------------------------------------------------------
# VIDEO (ComfyUI's native video type, comfy_api's VideoInput)
# ------------------------------------------------------------------------------------------------
class FileVideo:
    """Outside ComfyUI, a stand-in for ``comfy_api``'s ``VideoFromFile``: an mp4 on disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def get_stream_source(self) -> str:
        return str(self.path)

    def get_dimensions(self) -> tuple[int, int]:
        import av

        with av.open(str(self.path)) as container:
            stream = container.streams.video[0]
            return stream.width, stream.height

    def get_components(self):
        from echomimic_core.media import load_video

        data = load_video(self.path)
        audio = None if data.audio is None else {"waveform": data.audio[None], "sample_rate": data.sample_rate}
        return {"images": data.frames, "audio": audio, "frame_rate": data.fps}

    def save_to(self, path, format=None, codec=None, metadata=None) -> None:
        import shutil

        shutil.copyfile(self.path, path)


def video_from_file(path: str | Path):
    """VIDEO for an mp4 on disk: ComfyUI's ``VideoFromFile`` (Save Video copies its streams
    without re-encoding or loading the frames), else :class:`FileVideo`."""
    api = _module("comfy_api.input_impl")
    if api is not None and hasattr(api, "VideoFromFile"):
        return api.VideoFromFile(str(path))
    return FileVideo(path)


class FramesVideo:
    """Outside ComfyUI, a stand-in for ``comfy_api``'s ``VideoFromComponents``: frames in memory."""

    def __init__(self, images, audio: dict | None, fps: float):
        self.images, self.audio, self.fps = images, audio, fps

    def get_dimensions(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[1])

    def get_components(self):
        return {"images": self.images, "audio": self.audio, "frame_rate": self.fps}

    def save_to(self, path, format=None, codec=None, metadata=None) -> None:
        from echomimic_core.media import write_video

        waveform, rate = (self.audio["waveform"][0], self.audio["sample_rate"]) if self.audio else (None, None)
        write_video(path, self.images, self.fps, audio=waveform, sample_rate=rate)


def video_from_frames(images, audio: dict | None, fps: float):
    """VIDEO for frames in memory: ComfyUI's ``VideoFromComponents``, else :class:`FramesVideo`."""
    api, util = _module("comfy_api.input_impl"), _module("comfy_api.util")
    if api is not None and util is not None and hasattr(api, "VideoFromComponents"):
        from fractions import Fraction

        rate = Fraction(fps).limit_denominator(1001)
        return api.VideoFromComponents(util.VideoComponents(images=images, audio=audio, frame_rate=rate))
    return FramesVideo(images, audio, fps)


# ------------------------------------------------------------------------------------------------
# Progress, previews, interrupts
# ------------------------------------------------------------------------------------------------
def _to_pil(image: Any):
    """A preview (PIL image, IMAGE tensor [B,H,W,C]/[H,W,C] 0..1, or uint8 array) as a PIL image."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    import numpy as np

    array = image.detach().float().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 4:
        array = array[0]
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def latent_previewer():
    """ComfyUI's previewer for Wan2.1 latents (TAEHV or latent->RGB, per --preview-method), or None.

    Its factors are for normalised Wan latents, the space our sampler works in, and for a video
    it shows frame 0. None outside ComfyUI or when previews are off.
    """
    preview, formats = _module("latent_preview"), _module("comfy.latent_formats")
    if preview is None or formats is None:
        return None
    return preview.get_previewer(torch_device(), formats.Wan21())


class Progress:
    """Step progress for one node run: ComfyUI's progress bar, or nothing outside ComfyUI.

    Also usable as the core sampler's step callback: ``progress(step, total, preview, latents)``
    reports ``step`` steps done; ``preview`` is an image (PIL, IMAGE tensor) and ``latents``
    (``[B, 16, T, h, w]``, normalised) are turned into one by ComfyUI's previewer when the pack
    runs inside ComfyUI. Inside ComfyUI every update also raises if the user pressed Cancel (the
    progress hook checks the interrupt flag).
    """

    def __init__(self, total: int, node_id: str | None = None):
        self.total = int(total)
        self.value = 0
        self._bar = None
        self._previewer = None
        utils = _module("comfy.utils")
        if utils is not None:
            self._bar = utils.ProgressBar(self.total, node_id=node_id)
            self._previewer = latent_previewer()

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None, latents: Any = None) -> None:
        if total is not None:
            self.total = int(total)
        self.value = int(value)
        if self._bar is not None:
            shown = None
            if preview is not None:
                shown = ("JPEG", _to_pil(preview), PREVIEW_MAX_SIZE)
            elif latents is not None and self._previewer is not None:
                shown = self._previewer.decode_latent_to_preview_image("JPEG", latents)
            self._bar.update_absolute(self.value, self.total, shown)

    def __call__(self, step: int, total: int | None = None, preview: Any = None, latents: Any = None) -> None:
        self.update_absolute(step, total, preview, latents)


def check_interrupted() -> None:
    """Raise ComfyUI's InterruptProcessingException if the user pressed Cancel.

    Our transformer does not run through comfy.ops, so ComfyUI cannot stop it between layers;
    the sampler calls this between steps and chunks instead.
    """
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


# ------------------------------------------------------------------------------------------------
# Devices and memory
# ------------------------------------------------------------------------------------------------
def _default_device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def torch_device():
    """Where models compute."""
    mm = _module("comfy.model_management")
    return mm.get_torch_device() if mm is not None else _default_device()


def offload_device():
    """Where idle model weights are parked (ComfyUI's unet offload device; cpu without ComfyUI)."""
    import torch

    mm = _module("comfy.model_management")
    return mm.unet_offload_device() if mm is not None else torch.device("cpu")


def intermediate_device():
    """Where node outputs (IMAGE, LATENT ...) live between nodes."""
    import torch

    mm = _module("comfy.model_management")
    return mm.intermediate_device() if mm is not None else torch.device("cpu")


def free_memory(nbytes: int, device) -> None:
    """Ask ComfyUI to unload models until ``nbytes`` fit on ``device``. Nothing to do outside ComfyUI."""
    mm = _module("comfy.model_management")
    if mm is not None and hasattr(mm, "free_memory"):
        mm.free_memory(int(nbytes), device)


def vram_budget_auto(device) -> int | None:
    """Bytes a run may plan for on ``device`` ("auto"): inside ComfyUI the whole card less what it
    reserves (its memory manager unloads other models to make room); outside it what is free.
    None for a CPU."""
    import torch

    device = torch.device(device)
    if device.type not in ("cuda", "mps", "xpu"):
        return None
    mm = _module("comfy.model_management")
    if mm is not None and hasattr(mm, "get_total_memory"):
        return int(mm.get_total_memory(device) - mm.extra_reserved_memory())
    from echomimic_core.memory_plan import device_budget

    return device_budget(device)


class TransformerPatcher:
    """The EchoMimic transformer as one of ComfyUI's loaded models.

    ComfyUI's memory manager keeps a list of loaded models; before it loads one (ours, its VAE, a
    text encoder of another node) it unloads the least recently used until the new model and its
    working memory fit (``load_models_gpu`` -> ``free_memory``). Those functions call a handful of
    ``ModelPatcher`` methods, which this class answers: loading *places* the transformer (all of it,
    or all but its swapped blocks, which stream in from pinned host memory), unloading *parks* it
    (the resident part to the offload device; swapped blocks are already there, so nothing is
    uploaded on the way out). It never half-loads: our layers are not ComfyUI's lowvram layers, and
    the memory plan has already chosen how much stays on the host (block swap).

    The patcher lives as long as the model (an attribute of it; it holds the model weakly), which
    is what ComfyUI's leak check expects.
    """

    def __init__(self, model, load_device, offload_device, block_swap: int = 0):
        import torch

        self._model = weakref.ref(model)
        self.load_device, self.offload_device = torch.device(load_device), torch.device(offload_device)
        self.block_swap = block_swap
        self.parent = None
        self.loaded = False

    @property
    def model(self):
        return self._model()

    def model_size(self) -> int:
        """Bytes on the device when loaded: everything but the swapped blocks, two of which are in
        flight at any time."""
        model = self.model
        swap = min(self.block_swap, len(model.blocks))
        total = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
        block = sum(p.numel() * p.element_size() for p in model.blocks[0].parameters()) if swap else 0
        return total - swap * block + min(swap, 2) * block

    def loaded_size(self) -> int:
        return self.model_size() if self.loaded else 0

    def current_loaded_device(self):
        return self.load_device if self.loaded else self.offload_device

    def model_dtype(self):
        return self.model.compute_dtype

    def model_patches_to(self, device) -> None:  # no patches of ComfyUI's kind
        pass

    def model_patches_models(self) -> list:
        return []

    def is_clone(self, other) -> bool:
        return other is self

    def lowvram_patch_counter(self) -> int:
        return 0

    def partially_load(self, device, extra_memory=0, force_patch_weights=False) -> int:
        if not self.loaded:
            self.model.place(device, self.offload_device, self.block_swap)
            self.loaded = True
        return self.model_size()

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False) -> int:
        freed = self.loaded_size()
        self.detach()
        return freed

    def detach(self, unpatch_all=True) -> None:
        if self.loaded and self.model is not None:
            self.model.park(self.offload_device)
            log.info("EchoMimicV3 transformer parked on %s to make room", self.offload_device)
        self.loaded = False


@contextlib.contextmanager
def transformer_loaded(model, device, offload, block_swap: int, working_bytes: int):
    """The transformer on ``device`` for one run (all but ``block_swap`` blocks), with
    ``working_bytes`` (the memory plan's activations, caches and VAE) asked for as well.

    Inside ComfyUI it goes through the memory manager: other models are unloaded for the planned
    peak before ours move, and ours stay loaded after the run until ComfyUI needs the room (if it
    takes them away in the middle of a run, e.g. for its own VAE, the next forward loads them
    again). Outside ComfyUI: placed for the run, parked after.
    """
    mm = _module("comfy.model_management")
    if mm is None or not hasattr(mm, "load_models_gpu"):
        model.place(device, offload, block_swap)
        try:
            yield model
        finally:
            model.park(offload)
            soft_empty_cache()
        return
    patcher = getattr(model, "echomimic_patcher", None)
    # a copy of the model (the LoRA node's) must not drive the original's patcher
    stale = patcher is not None and (
        patcher.model is not model or patcher.load_device != device or patcher.block_swap != block_swap
    )
    if patcher is None or stale:
        if patcher is not None and patcher.model is model:
            patcher.detach()
        patcher = TransformerPatcher(model, device, offload, block_swap)
        model.echomimic_patcher = patcher

    def ensure_loaded(*_):
        if not patcher.loaded:
            mm.load_models_gpu([patcher], memory_required=int(working_bytes))

    ensure_loaded()
    hook = model.register_forward_pre_hook(ensure_loaded)
    try:
        yield model
    finally:
        hook.remove()


def load_model_gpu(patcher) -> None:
    """Have ComfyUI move one of its own models (a ``ModelPatcher``) to the compute device."""
    mm = _module("comfy.model_management")
    if mm is not None and patcher is not None:
        mm.load_model_gpu(patcher)


def soft_empty_cache(force: bool = False) -> None:
    """Give cached accelerator memory back after a big job."""
    mm = _module("comfy.model_management")
    if mm is not None:
        mm.soft_empty_cache(force)
        return
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
