"""Every generation setting, with upstream's defaults per released variant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

DEFAULT_NEGATIVE_PROMPT = (
    "Gesture is bad. Gesture is unclear. Strange and twisted hands. Bad hands. Bad fingers. "
    "Unclear and blurry hands. 手部快速摆动, 手指频繁抽搐, 夸张手势, 重复机械性动作."
)

SAMPLERS = ("Flow", "Flow_Unipc", "Flow_DPM++")
LONG_VIDEO_MODES = ("chunks", "sliding")
# What to keep and what to generate (echomimic_core.tasks.Task); the CLI's --task, the Task node's
# choices and training read this tuple.
TASKS = ("first_frame", "first_last", "keyframes", "lipsync", "continue")
# The paper's multi-task recipe (first frame, first + last frame, mouth-region inpainting): the tasks
# training samples, in the order its sampler draws them (resumed runs repeat their draws, so the
# order must not change).
PAPER_TASKS = ("first_frame", "first_last", "lipsync")
REFERENCE_ANCHORS = ("off", "colour", "keyframe")  # see drift.py


@dataclass
class GenerationSettings:
    """What a user can set for one generation. ``for_variant`` gives upstream's defaults."""

    sampler: str = "Flow"
    steps: int = 25
    shift: float = 5.0
    seed: int = 43
    guidance_scale: float = 4.0  # text CFG (preview's three-way guidance)
    audio_guidance_scale: float = 2.9
    use_dynamic_cfg: bool = True
    use_dynamic_acfg: bool = True
    neg_scale: float = 1.5
    neg_steps: int = 2
    cfg_skip_ratio: float = 0.0
    audio_scale: float = 1.0
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT
    fps: float = 25.0
    width: int | None = None  # None: picked from the image (area-preserving, /16)
    height: int | None = None
    sample_area: int = 768 * 768
    max_frames: int | None = None  # None: as long as the audio
    partial_video_length: int = 113
    overlap_video_length: int = 8  # chunks: pixel frames shared by neighbours; sliding: latent frames (as upstream)
    long_video_mode: str = "chunks"
    teacache_threshold: float = 0.0  # 0 = off
    teacache_skip_start_steps: int = 5
    teacache_offload: bool = False  # the step cache's tensors (TeaCache or EasyCache) on the CPU
    easycache_threshold: float = 0.0  # 0 = off; > 0 replaces TeaCache with EasyCache (~0.05)
    riflex_k: int | None = None
    color_match: bool = True
    batch_guidance: bool = True  # False: one guidance pass at a time (less memory)
    context_cache: bool = True  # text/CLIP keys and values computed once per generation (exact)
    vae_tile_size: int | None = None  # pixels; tiled VAE encode/decode for low memory (None = whole frames)
    vae_tile_overlap: int = 64
    loudness_normalize: bool | None = None  # None: the variant's default (flash: -23 LUFS)
    face_box: tuple[int, int, int, int] | None = field(default=None)  # y1, y2, x1, x2 in image pixels
    # long videos (chunks mode; see README "Long videos" and drift.py / audio_windows.py)
    audio_context_seconds: float = 10.0  # audio each side of a chunk the encoder sees; 0 = whole clip at once
    seam_search_frames: int = 12  # chunk ends may move this many frames earlier to a pause; 0 = fixed
    reference_anchor: str = "colour"  # off (upstream) / colour / keyframe: how later chunks see the reference
    redo_identity_below: float = 0.0  # redo a chunk whose CLIP identity proxy falls below this; 0 = off
    redo_sharpness_ratio: float = 0.0  # redo a chunk sharper than this fraction of the first; 0 = off

    @classmethod
    def for_variant(cls, variant: str, **overrides) -> GenerationSettings:
        """Upstream's defaults: preview = infer_preview.py's Config; flash = run_flash.sh."""
        if variant == "flash":
            base = cls(
                sampler="Flow_Unipc",
                steps=8,
                guidance_scale=6.0,
                audio_guidance_scale=3.0,
                use_dynamic_cfg=False,
                use_dynamic_acfg=False,
                neg_scale=1.0,
                neg_steps=0,
                negative_prompt="",
                partial_video_length=81,
                overlap_video_length=8,
                teacache_threshold=0.1,
            )
        else:
            base = cls()
        return dataclasses.replace(base, **overrides)

    def validate(self) -> None:
        """Raise ValueError naming the setting, the value and the allowed range."""
        checks = [
            (self.sampler in SAMPLERS, f"sampler must be one of {SAMPLERS}, got {self.sampler!r}"),
            (self.steps >= 1, f"steps must be >= 1, got {self.steps}"),
            (self.shift > 0, f"shift must be > 0, got {self.shift}"),
            (self.fps > 0, f"fps must be > 0, got {self.fps}"),
            (0.0 <= self.cfg_skip_ratio <= 1.0, f"cfg_skip_ratio must be in [0, 1], got {self.cfg_skip_ratio}"),
            (
                self.long_video_mode in LONG_VIDEO_MODES,
                f"long_video_mode must be one of {LONG_VIDEO_MODES}, got {self.long_video_mode!r}",
            ),
            (self.partial_video_length >= 5, f"partial_video_length must be >= 5, got {self.partial_video_length}"),
            # >= 1: a chunk continues from the previous chunk's last frames, which it shares
            (
                1 <= self.overlap_video_length < self.partial_video_length - 1,
                f"overlap_video_length must be in [1, partial_video_length - 1) = [1, {self.partial_video_length - 1}) "
                f"(partial_video_length is {self.partial_video_length}), got {self.overlap_video_length}",
            ),
            (self.teacache_threshold >= 0, f"teacache_threshold must be >= 0, got {self.teacache_threshold}"),
            (self.easycache_threshold >= 0, f"easycache_threshold must be >= 0, got {self.easycache_threshold}"),
            ((self.width is None) == (self.height is None), "width and height go together: give both or neither"),
            (
                self.width is None
                or self.height is None
                or (self.width % 16 == 0 and self.height % 16 == 0 and min(self.width, self.height) >= 32),
                f"width and height must be multiples of 16 and at least 32, got {self.width}x{self.height}",
            ),
            (
                self.vae_tile_size is None
                or (
                    self.vae_tile_size % 8 == 0
                    and self.vae_tile_size > self.vae_tile_overlap
                    and self.vae_tile_overlap % 8 == 0
                ),
                f"vae_tile_size must be a multiple of 8 above vae_tile_overlap (a multiple of 8), got "
                f"{self.vae_tile_size}/{self.vae_tile_overlap}",
            ),
            (self.max_frames is None or self.max_frames >= 1, f"max_frames must be >= 1, got {self.max_frames}"),
            (
                self.audio_context_seconds >= 0,
                f"audio_context_seconds must be >= 0 (0 = the whole clip at once), got {self.audio_context_seconds}",
            ),
            (
                self.seam_search_frames >= 0,
                f"seam_search_frames must be >= 0 (0 = fixed seams), got {self.seam_search_frames}",
            ),
            (
                self.reference_anchor in REFERENCE_ANCHORS,
                f"reference_anchor must be one of {REFERENCE_ANCHORS}, got {self.reference_anchor!r}",
            ),
            (
                0 <= self.redo_identity_below <= 1,
                f"redo_identity_below must be in [0, 1] (0 = off), got {self.redo_identity_below}",
            ),
            (
                0 <= self.redo_sharpness_ratio <= 1,
                f"redo_sharpness_ratio must be in [0, 1] (0 = off), got {self.redo_sharpness_ratio}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
