"""Command line: ``python -m echomimic_core generate ...`` and ``python -m echomimic_core demo-models DIR``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import os
import re
import sys
import time
from pathlib import Path

from .config import VARIANTS
from .settings import FIELDS, TASKS, Bounds, GenerationSettings, value_type, variant_defaults_text

log = logging.getLogger("echomimic_core")
DEMO_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "echomimic-comfy" / "demo-models"


def _settings_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per GenerationSettings field, generated from its metadata (type, bounds, help), so
    the CLI accepts exactly what ``GenerationSettings.validate`` and the nodes accept. Unset flags
    keep the variant's upstream default."""
    group = parser.add_argument_group("generation settings (default: upstream's for the model's variant)")
    for name, spec in FIELDS.items():
        meta, kind = spec.metadata, value_type(name)
        flag = meta["flag"] or "--" + name.replace("_", "-")
        shared = variant_defaults_text(name)
        if shared:
            default = f" (default: {shared})" if name != "negative_prompt" else " (default: upstream's, preview only)"
        elif spec.default is not None and kind is not bool:
            default = f" (default: {spec.default})"
        else:
            default = ""
        options = {"dest": name, "help": meta["help"] + default}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
        elif kind is tuple:
            group.add_argument(flag, type=int, nargs=len(meta["metavar"]), metavar=meta["metavar"], **options)
        elif meta["choices"]:
            group.add_argument(flag, choices=meta["choices"], **options)
        else:
            bounds = GenerationSettings.bounds(name)
            hint = f"{kind.__name__.upper()} in {bounds.describe()}" if bounds.min is not None else None
            group.add_argument(flag, type=_setting_type(name), metavar=hint, **options)


def _setting_type(name: str):
    """argparse type of setting ``name``: its value type, refused outside its bounds."""
    return _bounded(value_type(name), GenerationSettings.bounds(name))


def _bounded(kind: type, bounds: Bounds):
    """argparse type: parse as ``kind`` and refuse values outside the setting's bounds at once."""

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {'a whole number' if kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = bounds.problem(value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m echomimic_core", description="EchoMimicV3 talking-human video.")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="image + audio + prompt -> mp4 with the audio")
    gen.add_argument("--image", type=Path, help="reference image (not needed for --task lipsync/continue)")
    gen.add_argument("--audio", type=Path, help="speech/song: wav, mp3, m4a, flac, ogg, or a video's soundtrack")
    gen.add_argument("--prompt", default="A person is talking.")
    gen.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output .mp4; finished chunks wait in OUT.mp4.parts/ until it is complete, so running the "
        "same command again after an interruption resumes where it stopped",
    )
    gen.add_argument(
        "--restart", action="store_true", help="discard finished chunks of an earlier run and start afresh"
    )
    gen.add_argument(
        "--report",
        type=Path,
        metavar="REPORT.json",
        help="write per-chunk drift metrics (sharpness, colour shift, CLIP identity proxy, face box) "
        "to this JSON file and a plot of them beside it (.png)",
    )
    gen.add_argument(
        "--demo",
        action="store_true",
        help="use the tiny random demo model (and built-in image/audio if none given); output is noise",
    )
    gen.add_argument("--models", type=Path, help="folder with upstream's release layout or ComfyUI's models/")
    for slot in ("transformer", "vae", "text-encoder", "tokenizer", "image-encoder", "audio-encoder"):
        gen.add_argument(f"--{slot}", type=Path, help=f"explicit {slot.replace('-', ' ')} file/folder")
    gen.add_argument("--task", choices=TASKS, default="first_frame")
    gen.add_argument("--end-image", type=Path, help="first_last: the last frame")
    gen.add_argument(
        "--keyframe",
        action="append",
        default=[],
        metavar="INDEX:IMAGE",
        help="keyframes: keep IMAGE at frame INDEX (repeatable; negative counts from the end)",
    )
    gen.add_argument("--source-video", type=Path, help="lipsync / continue: the video to dub or continue")
    gen.add_argument(
        "--mouth-box",
        type=int,
        nargs=4,
        metavar=("TOP", "BOTTOM", "LEFT", "RIGHT"),
        help="lipsync: the region to regenerate, in the source video's pixels (upstream's y1 y2 x1 x2 order)",
    )
    gen.add_argument("--face-mask", type=Path, help="preview: image whose white pixels mark the face")
    gen.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    gen.add_argument(
        "--parallel",
        metavar="MODES",
        help="under torchrun: share each step over the processes: 'cfg' (guidance branches on different "
        "ranks), 'sequence' (tokens split, all-to-all attention) or 'cfg,sequence' (optionally cfg=K, "
        "sequence=M); see docs/PARALLEL.md",
    )
    gen.add_argument(
        "--dtype",
        default=None,
        choices=("bfloat16", "float16", "float32"),
        help="compute dtype (default: bfloat16 on CUDA, float32 on CPU)",
    )
    gen.add_argument(
        "--storage-dtype",
        choices=("bfloat16", "float16", "float32", "float8_e4m3fn"),
        help="how transformer weights are stored (float8_e4m3fn halves their memory)",
    )
    gen.add_argument("--attention", default="sdpa", help="sdpa, flash_attn, sageattention, xformers")
    gen.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="FILE[:STRENGTH]",
        help="merge a LoRA (e.g. one trained with training/) into the transformer; repeatable",
    )
    gen.add_argument("--block-swap", type=int, help="transformer blocks kept on the CPU and streamed in (default 0)")
    gen.add_argument(
        "--compile",
        dest="compile_blocks",
        action="store_true",
        help="torch.compile the transformer blocks (each new chunk shape compiles once: slower start, faster steps)",
    )
    gen.add_argument(
        "--encoders-on-cpu",
        action=argparse.BooleanOptionalAction,
        help="run the text, image and audio encoders on the CPU: the GPU never holds umT5's 11 GB, encoding "
        "takes longer (default: on --device; under --vram-budget the plan decides)",
    )
    gen.add_argument(
        "--vram-budget",
        metavar="GB|auto",
        help="fit the run into this much GPU memory ('auto': what the device has free): chunk length, block "
        "swap, fp8 weights, sequential guidance, VAE tiles, encoders on the CPU, the key cache and step-cache "
        "offload are chosen (see the `plan` command) unless given explicitly",
    )
    _settings_arguments(gen)

    plan = sub.add_parser(
        "plan",
        help="predicted GPU memory per phase for a generation, and the settings that fit a card",
        description="Prints the memory plan's candidates and the settings it would choose; exits 0 when one "
        "fits the budget and 1 (with the smallest requirement) when none does.",
    )
    # the settings' own bounds, so `plan` refuses what `generate` would (the sizes' defaults are plan's)
    plan.add_argument("--variant", choices=VARIANTS, required=True)
    plan.add_argument("--width", type=_setting_type("width"), default=768)
    plan.add_argument("--height", type=_setting_type("height"), default=768)
    length = plan.add_mutually_exclusive_group(required=True)
    length.add_argument("--seconds", type=float, help="audio length")
    length.add_argument("--frames", type=int, help="output frames")
    plan.add_argument("--fps", type=_setting_type("fps"), default=FIELDS["fps"].default)
    plan.add_argument("--vram", required=True, metavar="GB|auto", help="the GPU's memory budget")
    plan.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    plan.add_argument("--steps", type=_setting_type("steps"), help="denoising steps (default: the variant's)")
    plan.add_argument(
        "--guidance-scale",
        type=_setting_type("guidance_scale"),
        help="> 1 runs the guidance passes (default: the variant's)",
    )
    plan.add_argument(
        "--teacache-threshold", type=_setting_type("teacache_threshold"), help="0 = off (default: the variant's)"
    )
    plan.add_argument("--device", default="cuda", help="the device 'auto' measures")

    demo = sub.add_parser("demo-models", help="write the tiny demo model files into a models folder")
    demo.add_argument("out", type=Path, help="e.g. ComfyUI/models")
    return parser


def _attach_negative_keyframes(argv: list[str]) -> list[str]:
    """``--keyframe -1:last.png`` as ``--keyframe=-1:last.png``: argparse reads a value starting
    with '-' that is not a plain number as an option and fails with "expected one argument"."""
    out = []
    for arg in argv:
        if out and out[-1] == "--keyframe" and re.match(r"-\d+:", arg):
            out[-1] = f"--keyframe={arg}"
        else:
            out.append(arg)
    return out


def _settings_from(args, variant: str) -> GenerationSettings:
    names = {f.name for f in dataclasses.fields(GenerationSettings)}
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if "face_box" in overrides:
        overrides["face_box"] = tuple(overrides["face_box"])
    if args.demo:  # small and quick, with two chunks so long-video stitching runs too
        from .demo import demo_face_box

        demo = {"steps": 4, "partial_video_length": 33, "overlap_video_length": 4}
        if args.image is None:
            demo["face_box"] = demo_face_box()
        overrides = {**demo, **overrides}
    return GenerationSettings.for_variant(variant, **overrides)


def _keyframe_spec(spec: str) -> tuple[int, Path]:
    index, _, path = spec.partition(":")
    try:
        return int(index), Path(path)
    except ValueError:
        raise ValueError(f"--keyframe {spec!r}: expected INDEX:IMAGE, e.g. 40:pose.png") from None


def _task_from(args):
    from .media import load_image, load_video
    from .pipeline import Task

    task = Task(kind=args.task)
    if args.end_image:
        task.end_image = load_image(args.end_image)
    if args.keyframe:
        frames = {}
        for spec in args.keyframe:
            index, path = _keyframe_spec(spec)
            if index in frames:
                raise ValueError(f"--keyframe {spec!r}: frame {index} is given twice; give each frame once.")
            frames[index] = load_image(path)
        task.keyframes = frames
    if args.source_video:
        task.source_video = load_video(args.source_video, with_audio=False).frames
    if args.mouth_box:
        task.mouth_box = tuple(args.mouth_box)
    return task


def _lora_spec(spec: str) -> tuple[Path, float]:
    path, sep, strength = spec.rpartition(":")
    if not sep or not path:
        return Path(spec), 1.0
    try:
        value = float(strength)
    except ValueError:
        return Path(spec), 1.0  # a ':' inside the path itself
    if not math.isfinite(value):
        raise ValueError(f"--lora {spec}: the strength after ':' must be a finite number, got {strength!r}.")
    return Path(path), value


def _progress_hooks():
    from tqdm import tqdm

    from .sampling.sampler import StepHooks

    bar = {}

    def on_step(step, total, latents, denoised):
        if "bar" not in bar:
            bar["bar"] = tqdm(total=total, desc="denoising", unit="step", file=sys.stderr)
        bar["bar"].update(step - bar["bar"].n)

    return StepHooks(on_step=on_step), bar


MODEL_SLOTS = ("transformer", "vae", "text_encoder", "tokenizer", "image_encoder", "audio_encoder")


def _input_paths(args) -> list[Path]:
    """Every file the run reads: the output must be none of them."""
    paths = [args.image, args.audio, args.end_image, args.source_video, args.face_mask]
    paths += [getattr(args, slot) for slot in MODEL_SLOTS]
    paths += [_keyframe_spec(spec)[1] for spec in args.keyframe]
    paths += [_lora_spec(spec)[0] for spec in args.lora]
    return [p for p in paths if p is not None]


def generate_command(args) -> int:
    if not args.parallel:
        return _generate(args, args.device or None, rank=0)
    import torch.distributed as dist

    from .parallel import init_process_group

    device = init_process_group(args.device)
    try:
        if dist.get_rank() != 0:  # rank 0 speaks for all
            logging.getLogger().setLevel(logging.WARNING)
        return _generate(args, str(device), rank=dist.get_rank())
    finally:
        dist.destroy_process_group()


def _start_parallel(spec: str, config, settings):
    """This rank's ``Parallel`` for ``--parallel spec``, checked against the model before it loads."""
    import torch.distributed as dist

    from .parallel import Parallel, ParallelSpec
    from .pipeline import guidance_for_variant

    branches = len(guidance_for_variant(config.variant, settings).passes_for_step(0, settings.steps))
    parallel = Parallel(ParallelSpec.parse(spec, dist.get_world_size(), branches))
    parallel.check_model(config.num_heads)
    log.info("parallel generation: %d cfg x %d sequence ranks", parallel.spec.cfg, parallel.spec.sequence)
    return parallel


def _generate(args, device: str | None, rank: int) -> int:
    import torch

    from .media import load_audio, load_image
    from .model_files import find_model_files, load_models
    from .output_files import check_output_path
    from .pipeline import plan_inputs
    from .streaming import generate_to_file

    check_output_path(args.out, inputs=_input_paths(args), announce_replace=rank == 0)
    if args.demo:
        from .demo import DEMO_VERSION, demo_inputs, write_demo_models

        if args.parallel:  # rank 0 writes the demo files, the others read them
            import torch.distributed as dist

            if rank == 0:
                write_demo_models(DEMO_CACHE / f"v{DEMO_VERSION}")
            dist.barrier()
        files = write_demo_models(DEMO_CACHE / f"v{DEMO_VERSION}")
        image, audio, sr = demo_inputs()
        image = load_image(args.image) if args.image else image
        if args.audio:
            audio, sr = load_audio(args.audio)
    else:
        if args.models is None and args.transformer is None:
            raise SystemExit("give --models DIR (or the model files one by one), or --demo for the tiny demo model")
        explicit = {k: getattr(args, k) for k in MODEL_SLOTS}
        files = find_model_files(args.models, **explicit)
        if args.audio is None:
            raise SystemExit("--audio is required")
        audio, sr = load_audio(args.audio)
        image = load_image(args.image) if args.image else None
    task = _task_from(args)
    if image is None and task.kind not in ("lipsync", "continue"):
        raise SystemExit(f"--image is required for --task {task.kind}")
    face_mask = load_image(args.face_mask).mean(-1).numpy() if args.face_mask else None

    from .model.attention import check_backend

    try:  # a missing kernel package is the user's to fix: one line, not a traceback from the loader
        check_backend(args.attention)
    except RuntimeError as e:
        raise ValueError(str(e)) from e
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype or ("bfloat16" if torch.device(device).type == "cuda" else "float32")
    started = time.time()
    parallel = None
    if files.transformer is not None:  # check everything that needs no model before loading gigabytes
        from .checkpoints.transformer import inspect_checkpoint
        from .model.transformer import check_block_swap

        config = inspect_checkpoint(files.transformer).config
        settings = _settings_from(args, config.variant)
        check_block_swap(args.block_swap or 0, config.num_layers)
        plan_inputs(image, audio, sr, settings, task, in_memory=False)  # written chunk by chunk
        if args.parallel:
            parallel = _start_parallel(args.parallel, config, settings)
    load, encoder_device = _hand_set_placement(args)
    if args.vram_budget is not None:
        if files.transformer is None:
            raise ValueError("--vram-budget needs the transformer file to plan with (--models or --transformer).")
        settings, load, encoder_device = _fit_to_budget(
            args, settings, config.variant, config, image, audio, sr, task, device, dtype
        )
    models = load_models(
        files,
        dtype=dtype,
        device=device,
        attention_backend=args.attention,
        loras=[_lora_spec(spec) for spec in args.lora],
        compile_blocks=args.compile_blocks,
        **load,
    )
    if args.vram_budget is None:
        settings = _settings_from(args, models.variant)
    hooks, bar = _progress_hooks() if rank == 0 else (None, {})
    if args.demo:
        log.warning("demo model: random tiny weights, the video will be noise (the path it runs is the real one)")
    result = generate_to_file(
        models,
        image,
        audio,
        sr,
        args.prompt,
        args.out,
        settings,
        task=task,
        face_mask=face_mask,
        hooks=hooks,
        device=device,
        parallel=parallel,
        resume=not args.restart,
        report=args.report,
        write=rank == 0,
        encoder_device=encoder_device,
    )
    if "bar" in bar:
        bar["bar"].close()
    if rank != 0:  # every rank renders the same frames; rank 0 writes them
        return 0
    seconds = result.frames / result.fps
    # sliding mode denoises overlapping latent windows of one video, not pixel chunks
    plan = "sliding windows" if settings.long_video_mode == "sliding" else f"{result.info['chunks']} chunk(s)"
    print(
        f"wrote {result.path}: {result.frames} frames {result.info['size'][1]}x{result.info['size'][0]} "
        f"at {result.fps:g} fps ({seconds:.2f} s, {plan}) in {time.time() - started:.1f} s"
    )
    if result.report_paths:
        print(f"drift report: {result.report_paths[0]} (plot {result.report_paths[1]})")
    return 0


def plan_command(args) -> int:
    from .memory_plan import GIB, device_budget, format_plan, parse_budget, plan, workload_for

    overrides = {
        k: getattr(args, k) for k in ("steps", "guidance_scale", "teacache_threshold") if getattr(args, k) is not None
    }
    settings = GenerationSettings.for_variant(args.variant, fps=args.fps, **overrides)
    frames = args.frames if args.frames is not None else int(args.seconds * args.fps)
    if frames < 1:
        raise ValueError(f"--seconds {args.seconds} at {args.fps:g} fps is less than one frame.")
    workload = workload_for(args.variant, settings, (args.height, args.width), frames, args.dtype)
    gb = parse_budget(args.vram)
    budget = int(gb * GIB) if gb is not None else device_budget(args.device)
    if budget is None:
        raise ValueError(f"--vram auto needs a GPU; {args.device} has no device memory to plan for. Give a number.")
    result = plan(workload, budget)
    print(format_plan(result))
    if result.fits:
        print("flags: " + " ".join(_plan_flags(result.chosen.options)))
    return 0 if result.fits else 1


# the plan's Options fields that a generate flag sets as given: field -> the flag's argparse dest
# (chunk and fp8 are set through --partial-video-length and --storage-dtype, which say more)
_PLAN_OPTION_FLAGS = {
    "block_swap": "block_swap",
    "batch_guidance": "batch_guidance",
    "vae_tile": "vae_tile_size",
    "encoders_on_cpu": "encoders_on_cpu",
    "context_cache": "context_cache",
    "teacache_offload": "teacache_offload",
}


def _plan_flags(options) -> list[str]:
    """The ``generate`` flags that set a plan's choices by hand (those that differ from the defaults)."""
    flags = [f"--partial-video-length {options.chunk}"]
    if options.fp8:
        flags.append("--storage-dtype float8_e4m3fn")
    for field, dest in _PLAN_OPTION_FLAGS.items():
        value = getattr(options, field)
        if value == getattr(type(options), field):
            continue
        name = dest.replace("_", "-")
        if isinstance(value, bool):  # BooleanOptionalAction: --x / --no-x
            flags.append(f"--{name}" if value else f"--no-{name}")
        else:
            flags.append(f"--{name} {value}")
    return flags


def _hand_set_placement(args) -> tuple[dict, str | None]:
    """(load_models options, encoder device) from the flags as given, for a run without a plan."""
    load = {"storage_dtype": args.storage_dtype, "block_swap": args.block_swap or 0}
    if args.encoders_on_cpu:
        load["encoders_on_cpu"] = True
    return load, "cpu" if args.encoders_on_cpu else None


def _hand_set_plan_options(args, settings) -> dict:
    """The memory plan's ``Options`` fields the user fixed with a flag (``--vram-budget`` keeps them)."""
    fixed = {
        field: getattr(args, dest) for field, dest in _PLAN_OPTION_FLAGS.items() if getattr(args, dest) is not None
    }
    if args.partial_video_length is not None:
        fixed["chunk"] = settings.partial_video_length
    if args.storage_dtype is not None:
        fixed["fp8"] = args.storage_dtype == "float8_e4m3fn"
    return fixed


def _fit_to_budget(args, settings, variant: str, config, image, audio, sr, task, device: str, dtype: str):
    """``--vram-budget``: the memory plan's choice for this run, given what the user fixed by hand.
    Returns (settings, load options, encoder device)."""
    from .media import prepare_audio
    from .memory_plan import GIB, device_budget, format_plan, parse_budget, plan, workload_for
    from .pipeline import output_frame_count, plan_generation

    gb = parse_budget(args.vram_budget)
    budget = int(gb * GIB) if gb is not None else device_budget(device)
    if budget is None:
        log.warning(
            "--vram-budget auto: %s has no device memory to plan for; running with the settings as given", device
        )
        return (settings, *_hand_set_placement(args))
    generation = plan_generation(image, output_frame_count(prepare_audio(audio, sr).numel(), settings), settings, task)
    workload = workload_for(variant, settings, generation.sample_size, generation.total_frames, dtype, config)
    result = plan(workload, budget, _hand_set_plan_options(args, settings))
    log.info("memory plan:\n%s", format_plan(result))
    if not result.fits:
        raise ValueError(
            f"nothing fits --vram-budget {budget / GIB:.1f} GiB: the smallest plan needs "
            f"{result.smallest.required / GIB:.2f} GiB ({result.smallest.options.describe()}); lower the resolution, "
            "or give a larger budget."
        )
    options = result.chosen.options
    log.info("memory plan chose: %s (%.2f GiB)", options.describe(), result.chosen.required / GIB)
    settings = dataclasses.replace(settings, **options.settings_overrides())
    load = {
        "storage_dtype": "float8_e4m3fn" if options.fp8 else args.storage_dtype,
        "block_swap": options.block_swap,
        "place_transformer": False,  # on the device after the encoders ran (pipeline.generate)
        "encoders_on_cpu": options.encoders_on_cpu,
    }
    return settings, load, "cpu" if options.encoders_on_cpu else None


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(_attach_negative_keyframes(argv))
    if args.command == "plan":
        try:
            return plan_command(args)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    if args.command == "demo-models":
        from .demo import write_demo_models

        write_demo_models(args.out, overwrite=True)
        for variant in VARIANTS:
            for slot, path in vars(write_demo_models(args.out, variant=variant)).items():
                if path is not None:
                    print(f"{variant:8s} {slot:14s} {path}")
        return 0
    from .interrupts import exit_code, stop_immediately

    try:
        with stop_immediately():  # SIGTERM stops as Ctrl-C does: partial files removed on the way out
            return generate_command(args)
    except (ValueError, FileNotFoundError) as e:  # user errors: one clear line, no traceback
        log.debug("failed", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        log.debug("interrupted", exc_info=True)
        print(f"{str(e) or 'interrupted'}; nothing was written to {args.out}", file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
