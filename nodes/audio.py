"""Audio nodes: the clip length an AUDIO gives, and the audio features the transformer consumes."""

from __future__ import annotations

from .common import CATEGORY, audio_input, on_compute_device, out_of_range
from .setting_widgets import setting_widget


def _frames(waveform, rate: int, fps: float, max_frames: int) -> tuple[object, int]:
    """(16 kHz mono waveform, frames the clip supports: floor(duration * fps), capped).

    No 4k+1 rounding, as the pipeline: the last chunk is rounded up and trimmed, so the video
    covers the whole audio (``pipeline.output_frame_count``).
    """
    from echomimic_core.audio_alignment import SAMPLE_RATE, frames_for_samples
    from echomimic_core.media import prepare_audio
    from echomimic_core.settings import GenerationSettings

    # a linked fps skips the widget's bounds: the sampler would refuse it only after the encoding
    problem = GenerationSettings.bounds("fps").problem(fps)
    if problem:
        raise ValueError(f"fps {problem}; the sampler accepts this range.")
    wav16 = prepare_audio(waveform, rate)
    frames = frames_for_samples(wav16.shape[-1], fps, max_frames=max_frames or None, round_to_4k1=False)
    if frames < 1:
        raise ValueError(
            f"the audio lasts {wav16.shape[-1] / SAMPLE_RATE:.3f} s, less than one frame at {fps} fps; use a longer clip."
        )
    return wav16, frames


class EchoMimicAudioEncode:
    """AUDIO -> the features of the loaded encoder's variant for every video frame."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio_encoder": ("ECHOMIMIC_AUDIO_ENCODER",),
                "audio": ("AUDIO",),
                "fps": setting_widget("fps")[0],
                "max_frames": setting_widget(
                    "max_frames",
                    "Upstream's flash script stopped at 81 frames; here long audio is rendered in chunks.",
                )[0],
                "context_seconds": setting_widget(
                    "audio_context_seconds",
                    "Used when the sampler renders chunks; identical to the whole-clip pass for clips up to a "
                    "chunk plus twice this.",
                )[0],
            }
        }

    RETURN_TYPES = ("ECHOMIMIC_AUDIO_EMBEDS", "INT")
    RETURN_NAMES = ("audio_embeds", "frames")
    FUNCTION = "encode"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, fps=25.0, context_seconds=0.0):
        # ComfyUI's own check lets a NaN from an API prompt through; refused when queued
        return out_of_range(cls, {"fps": fps, "context_seconds": context_seconds}) or True

    def encode(self, audio_encoder, audio, fps, max_frames, context_seconds=0.0):
        from echomimic_core.audio_windows import WindowedAudioFeatures
        from echomimic_core.settings import GenerationSettings

        problem = GenerationSettings.bounds("audio_context_seconds").problem(context_seconds)
        if problem:  # a linked value skips the widget's bounds (NaN would mean "whole clip" silently)
            raise ValueError(f"context_seconds {problem}")
        waveform, rate = audio_input(audio)
        wav16, frames = _frames(waveform, rate, fps, max_frames)
        if context_seconds > 0:  # encoded window by window when the sampler's chunks ask
            features = WindowedAudioFeatures(
                audio_encoder,
                wav16,
                frames,
                fps,
                context_seconds,
                device_scope=lambda: on_compute_device(audio_encoder),
            )
        else:
            with on_compute_device(audio_encoder):
                features = audio_encoder.features_for_video(wav16, frames, fps).float().cpu()
        # the source audio (its own rate and channels) rides along so the sampler can hand back the
        # clip trimmed to the video
        embeds = {
            "features": features,
            "kind": audio_encoder.kind,
            "num_frames": frames,
            "fps": float(fps),
            "audio": {"waveform": waveform[None].float().cpu(), "sample_rate": rate},
        }
        return (embeds, frames)


class EchoMimicAudioFrames:
    """How many frames and seconds of video an AUDIO gives; feeds length inputs."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "audio": ("AUDIO",),
                "fps": setting_widget("fps")[0],
                "max_frames": setting_widget("max_frames")[0],
            }
        }

    RETURN_TYPES = ("INT", "FLOAT")
    RETURN_NAMES = ("frames", "seconds")
    FUNCTION = "count"
    CATEGORY = CATEGORY

    @classmethod
    def VALIDATE_INPUTS(cls, fps=25.0):
        # ComfyUI's own check lets a NaN fps from an API prompt through; refused when queued
        return out_of_range(cls, {"fps": fps}) or True

    def count(self, audio, fps, max_frames):
        _, frames = _frames(*audio_input(audio), fps, max_frames)
        return (frames, frames / fps)


NODE_CLASS_MAPPINGS = {
    "EchoMimicAudioEncode": EchoMimicAudioEncode,
    "EchoMimicAudioFrames": EchoMimicAudioFrames,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EchoMimicAudioEncode": "EchoMimicV3 Audio Encode",
    "EchoMimicAudioFrames": "EchoMimicV3 Audio Frames",
}
