"""DPO preference pairs: generate N candidates per reference with the current model, score them,
and write the pair manifest ``training.preprocess --kind dpo`` reads.

    python -m training.pairs generate refs.jsonl --out data/gen --models models/ \\
        [--transformer runs/x/checkpoints/checkpoint-2000/transformer.safetensors | --lora ...] \\
        --candidates 4 [--syncnet syncnet_v2.model]
    python -m training.pairs pair data/gen/candidates.jsonl --out data/pairs.jsonl --score sharpness

``refs.jsonl`` rows: ``{"id", "image", "audio", "caption"}`` (paths relative to the file). ``generate``
writes ``<out>/<id>/<k>.mp4`` (seeds seed..seed+N-1) and ``<out>/candidates.jsonl``, one row a
candidate with its automatic scores:

* ``sharpness``: variance of the Laplacian of the grey frames (higher = sharper), mean over frames;
* ``identity``: cosine similarity of each frame's CLIP embedding (the model's own image encoder,
  class token) to the reference's, mean over frames — an identity proxy, not a face-recognition score.
  Both are the long-video drift report's measures (``echomimic_core.drift``), on whole frames;
* ``sync``: SyncNet confidence with ``--syncnet`` weights (25 fps only).

Add a ``label`` column by hand (any number, higher = better) to rank by your own judgement.
``pair`` ranks each reference's candidates by ``--score`` and pairs the best with the worst (with
``--min-gap``: only when they differ by at least that much), writing the DPO manifest rows
``{"id", "chosen", "rejected", "caption", "audio"}`` (paths relative to the pair manifest).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from echomimic_core.settings import GenerationSettings, offset_seed

log = logging.getLogger(__name__)

SCORES = ("sharpness", "identity", "sync", "label")


def sharpness(frames: torch.Tensor) -> float:
    """Mean over frames [F, H, W, 3] (0..1) of the focus measure the long-video drift report uses
    (``drift.laplacian_variance``: variance of the grey image's Laplacian)."""
    from echomimic_core.drift import laplacian_variance
    from echomimic_core.media import to_uint8_frames

    return float(np.mean([laplacian_variance(frame) for frame in to_uint8_frames(frames)]))


@torch.no_grad()
def identity(frames: torch.Tensor, reference: torch.Tensor, image_encoder, every: int = 4) -> float:
    """Mean cosine similarity of the CLIP class token (``drift.clip_embedder``, the drift report's
    identity proxy) of every ``every``-th frame [F, H, W, 3] (0..1) to the reference's [H, W, 3]."""
    from echomimic_core.drift import clip_embedder
    from echomimic_core.media import to_uint8_frames

    images = to_uint8_frames(torch.cat([reference[None], frames[::every]]))
    tokens = torch.nn.functional.normalize(clip_embedder(image_encoder)(list(images)), dim=-1)  # [1 + n, C]
    return float((tokens[1:] @ tokens[0]).mean())


def read_rows(path: str | Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for i, row in enumerate(rows):
        missing = [k for k in ("id", "image", "audio") if k not in row]
        if missing:
            raise ValueError(f"{path}:{i + 1}: a reference row needs id, image and audio; missing {missing}.")
    return rows


def generate_candidates(
    refs: list[dict],
    root: Path,
    out: Path,
    models,
    candidates: int,
    seed: int = GenerationSettings.seed,
    settings_overrides: dict | None = None,
    sync_scorer=None,
    device=None,
) -> Path:
    """Write every candidate video and ``out/candidates.jsonl``; returns that file's path. Rows
    already there (same id and seed) are kept, so an interrupted run resumes."""
    from echomimic_core import media
    from echomimic_core.pipeline import generate

    out.mkdir(parents=True, exist_ok=True)
    listing = out / "candidates.jsonl"
    done = {}
    if listing.is_file():
        for line in listing.read_text().splitlines():
            row = json.loads(line)
            done[(row["ref"], row["seed"])] = row
    settings = GenerationSettings.for_variant(models.variant, **(settings_overrides or {}))
    settings.validate()
    rows = []
    for ref in refs:
        image = media.load_image(root / ref["image"])
        audio, sr = media.load_audio(root / ref["audio"])
        for k in range(candidates):
            candidate_seed = offset_seed(seed, k)
            key = (ref["id"], candidate_seed)
            if key in done and (out / done[key]["video"]).is_file():
                rows.append(done[key])
                continue
            result = generate(
                models,
                image,
                audio,
                sr,
                ref.get("caption", ""),
                dataclasses.replace(settings, seed=candidate_seed),
                device=device,
            )
            video = Path(ref["id"]) / f"{k}.mp4"
            media.write_video(
                out / video, result.frames, result.fps, audio=result.audio, sample_rate=result.sample_rate
            )
            reference = torch.nn.functional.interpolate(  # [H, W, 3] 0..1 at the video's size
                image.float().permute(2, 0, 1)[None], size=result.frames.shape[1:3], mode="bilinear", antialias=True
            )[0].permute(1, 2, 0)
            row = {
                "ref": ref["id"],
                "seed": candidate_seed,
                "video": video.as_posix(),
                "audio": os.path.relpath(root / ref["audio"], out),
                "caption": ref.get("caption", ""),
                "sharpness": round(sharpness(result.frames), 4),
                "identity": round(identity(result.frames, reference.clamp(0, 1), models.image_encoder), 5),
            }
            if sync_scorer is not None:
                from echomimic_core.face_region import detect_face_box
                from echomimic_core.tasks import to_uint8_image
                from training.prepare import to_frac

                face = detect_face_box(to_uint8_image(result.frames[0]))
                if face is not None:
                    box = to_frac(face, result.frames.shape[1:3])  # the manifest's box, as prepare's scorer takes it
                    row["sync"] = round(sync_scorer(out / video, 0.0, len(result.frames), result.fps, box)[0], 4)
            rows.append(row)
            listing.write_text("".join(json.dumps(r) + "\n" for r in rows))  # progress survives a kill
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return listing


def make_pairs(candidates: list[dict], score: str, min_gap: float = 0.0) -> list[dict]:
    """Best vs worst candidate of each reference by ``score`` (higher = better)."""
    if score not in SCORES:
        raise ValueError(f"--score must be one of {SCORES}, got {score!r}.")
    groups = defaultdict(list)
    for row in candidates:
        groups[row["ref"]].append(row)
    pairs = []
    for ref, rows in groups.items():
        scored = [r for r in rows if r.get(score) is not None]
        if len(scored) < 2:
            log.warning("%s: fewer than two candidates with a %r score; no pair", ref, score)
            continue
        ranked = sorted(scored, key=lambda r: r[score])
        worst, best = ranked[0], ranked[-1]
        if best[score] - worst[score] < max(min_gap, 1e-12):
            log.info("%s: candidates too close on %s (%g vs %g); no pair", ref, score, best[score], worst[score])
            continue
        pairs.append(
            {
                "id": f"{ref}_s{best['seed']}_vs_s{worst['seed']}",
                "chosen": best["video"],
                "rejected": worst["video"],
                "caption": best.get("caption", ""),
                "audio": best["audio"],
                "score": score,
                "chosen_score": best[score],
                "rejected_score": worst[score],
            }
        )
    return pairs


def write_pairs(candidates_path: str | Path, out: str | Path, score: str, min_gap: float = 0.0) -> int:
    candidates_path, out = Path(candidates_path), Path(out)
    rows = [json.loads(line) for line in candidates_path.read_text().splitlines() if line.strip()]
    if score not in SCORES:
        raise ValueError(f"--score must be one of {SCORES}, got {score!r}.")
    if not any(score in r for r in rows):
        raise ValueError(
            f"{candidates_path}: no candidate has a {score!r} column"
            + ("; add your labels (higher = better) to the rows" if score == "label" else "")
            + "."
        )
    pairs = make_pairs(rows, score, min_gap)
    prefix = os.path.relpath(candidates_path.parent, out.parent)
    for p in pairs:
        for key in ("chosen", "rejected", "audio"):
            p[key] = os.path.normpath(os.path.join(prefix, p[key])).replace(os.sep, "/")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return len(pairs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.pairs", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="N candidates per reference with the current model, scored")
    g.add_argument("refs", help="JSONL of references: id, image, audio, caption")
    g.add_argument("--out", required=True, help="folder for the candidate videos and candidates.jsonl")
    g.add_argument("--models", default=None, help="models folder (upstream's release or ComfyUI's models/)")
    g.add_argument("--transformer", default=None, help="the transformer to sample (e.g. a training checkpoint)")
    g.add_argument("--lora", default=None, help="a training LoRA (lora.safetensors) merged at strength 1")
    g.add_argument("--demo", action="store_true", help="the tiny demo models (a check of the path, videos are noise)")
    g.add_argument("--candidates", type=int, default=4)
    g.add_argument("--seed", type=int, default=GenerationSettings.seed, help="candidate k uses seed + k")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (default: the variant's)")
    g.add_argument("--max-frames", type=int, default=None)
    g.add_argument("--syncnet", default=None, help="SyncNet weights for the sync score (see training.prepare)")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    q = sub.add_parser("pair", help="pair manifest from a score column")
    q.add_argument("candidates", help="candidates.jsonl written by generate (a label column may be added)")
    q.add_argument("--out", required=True, help="pair manifest for training.preprocess --kind dpo")
    q.add_argument("--score", choices=SCORES, default="sharpness")
    q.add_argument("--min-gap", type=float, default=0.0, help="skip references whose best and worst differ less")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "pair":
        try:
            count = write_pairs(args.candidates, args.out, args.score, args.min_gap)
        except (ValueError, FileNotFoundError) as e:
            p.error(str(e))
        print(json.dumps({"pairs": count, "out": args.out}))
        return 0 if count else 1
    if args.candidates < 2:
        p.error("--candidates must be at least 2 (a pair needs two)")
    problem = GenerationSettings.bounds("seed").problem(args.seed)
    if problem:  # before any model loads; larger seeds would overflow torch's generator
        p.error(f"--seed {problem}")
    refs_path = Path(args.refs)
    try:
        refs = read_rows(refs_path)
        scorer = None
        if args.syncnet:
            from training.syncnet import SyncNetScorer

            scorer = SyncNetScorer.load(args.syncnet)
        from echomimic_core.model_files import find_model_files, load_models

        if args.demo:
            from echomimic_core.demo import write_demo_models

            files = write_demo_models(Path(args.out) / ".demo_models")
            if args.transformer:
                files.transformer = Path(args.transformer)
        else:
            files = find_model_files(args.models, transformer=args.transformer)
    except (ValueError, FileNotFoundError) as e:
        p.error(str(e))
    dtype = "bfloat16" if torch.device(args.device).type == "cuda" else "float32"
    models = load_models(files, dtype=dtype, device=args.device, loras=[(args.lora, 1.0)] if args.lora else ())
    overrides = {k: v for k, v in {"steps": args.steps, "max_frames": args.max_frames}.items() if v is not None}
    listing = generate_candidates(
        refs, refs_path.parent, Path(args.out), models, args.candidates, args.seed, overrides, scorer, args.device
    )
    print(json.dumps({"candidates": str(listing)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
