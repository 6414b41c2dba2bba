// Clip length and long-video chunks implied by audio duration, fps, partial_video_length and
// overlap. JavaScript twin of nodes/video_plan.py (which calls the core's own rules); both are
// tested on web/tests/video_plan_cases.json.
//
// Rules:
//   samples = round(duration_s * 16000); fps = nearest fraction num/den with den <= 1001;
//   frames = floor(samples * num / (16000 * den)), capped by maxFrames (Flash's single window),
//   not rounded (as the pipeline: the last chunk is rounded up and trimmed);
//   latentFrames = latent length of frames rounded UP to 4k+1;
//   partial = partial_video_length rounded down to 4k+1 (>= 5), 0 <= overlap < partial;
//   chunks start every partial - overlap frames; the chunk reaching the end is the remaining
//   frames rounded UP to 4k+1 (surplus trimmed), so the output has exactly `frames` frames.
//   mostChunks: with the sampler's seam search (seamSearch > 0) a chunk that does not reach the end
//   may be up to seamSearch frames shorter (4-frame steps, >= max(5, overlap + 4)) to put its seam
//   in a pause; the most chunks is every such chunk at its shortest (long_video.most_chunks_at_pauses).

import { AUDIO_SAMPLE_RATE as SAMPLE_RATE, SETTINGS, VAE_TEMPORAL_STRIDE as STRIDE, VARIANT_DEFAULTS } from "./facts.js";

// echomimic_core/vae_frames.py's helpers
export const roundDown4k1 = (n) => (n < 1 ? 0 : Math.floor((n - 1) / STRIDE) * STRIDE + 1);
export const roundUp4k1 = (n) => Math.ceil((Math.max(n, 1) - 1) / STRIDE) * STRIDE + 1;
export const latentFrames = (frames) => Math.floor((frames - 1) / STRIDE) + 1;

// Python's Fraction(fps).limit_denominator(1001), by search (fps values are small).
export function fpsFraction(fps) {
  if (!(Number.isFinite(fps) && fps > 0)) throw new RangeError(`fps must be a finite positive number, got ${fps}.`);
  let best = [Math.round(fps), 1];
  let bestError = Math.abs(best[0] - fps);
  for (let den = 2; den <= 1001 && bestError > 0; den++) {
    const num = Math.round(fps * den);
    const error = Math.abs(num / den - fps);
    if (num > 0 && error < bestError) [best, bestError] = [[num, den], error];
  }
  return best;
}

const floorDiv = (a, b) => (a - (a % b)) / b; // exact for non-negative integers below 2^53

export function planVideo(durationS, fps, partial, overlap, maxFrames = null, seamSearch = 0) {
  const [num, den] = fpsFraction(fps);
  let frames = floorDiv(Math.round(durationS * SAMPLE_RATE) * num, SAMPLE_RATE * den);
  if (maxFrames !== null && maxFrames !== undefined) frames = Math.min(frames, Math.trunc(maxFrames));
  if (!(frames >= 1)) {
    throw new RangeError(`${Number(durationS).toFixed(3)} s of audio at ${fps} fps is less than one frame; use a longer audio clip.`);
  }
  const part = roundDown4k1(Math.trunc(partial));
  const least = SETTINGS.partial_video_length.min;
  if (part < least) throw new RangeError(`partial_video_length must be at least ${least} frames, got ${partial}`);
  if (!(overlap >= 0 && overlap < part)) {
    throw new RangeError(`overlap_video_length must be in [0, ${part}) for partial_video_length ${part}, got ${overlap}`);
  }
  const chunks = [];
  let start = 0;
  let shared = 0;
  for (;;) {
    const remaining = frames - start;
    if (remaining <= part) {
      chunks.push([start, roundUp4k1(remaining), shared]);
      break;
    }
    chunks.push([start, part, shared]);
    shared = overlap;
    start += part - overlap;
  }
  let mostChunks = chunks.length;
  if (seamSearch > 0) {
    const shortest = Math.max(5, overlap + STRIDE, part - seamSearch);
    const step = part - Math.floor((part - shortest) / STRIDE) * STRIDE - overlap;
    for (mostChunks = 1, start = 0; frames - start > part; mostChunks++) start += step;
  }
  return {
    frames, latentFrames: latentFrames(roundUp4k1(frames)), partial: part, chunks, seconds: frames / fps, mostChunks,
  };
}

// The sampler's partial_video_length 0 means the model variant's upstream chunk length
// (echomimic_core.settings.VARIANT_DEFAULTS, via the generated facts.js).
export function resolvePartial(partial, variant) {
  return partial ? partial : (VARIANT_DEFAULTS[variant] ?? VARIANT_DEFAULTS.preview).partial_video_length;
}

// One line for the node: "125 frames · 5.00 s · 32 latent · 2 chunks", "2–3 chunks" when seam search
// may add chunks. In the sampler's sliding long_video_mode the windows are cut in latent frames, not
// these pixel chunks, so no count is shown.
export function formatPlan(plan, longVideoMode = "chunks") {
  const n = plan.chunks.length;
  const chunks = longVideoMode === "sliding" ? "sliding windows"
    : plan.mostChunks > n ? `${n}–${plan.mostChunks} chunks`
    : n === 1 ? "1 chunk" : `${n} chunks`;
  const length = plan.frames === 1 ? "1 frame" : `${plan.frames} frames`;
  return `${length} · ${plan.seconds.toFixed(2)} s · ${plan.latentFrames} latent · ${chunks}`;
}
