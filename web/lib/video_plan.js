// Clip length and long-video chunks implied by audio duration, fps, partial_video_length and
// overlap. JavaScript twin of nodes/video_plan.py; both are tested on web/tests/video_plan_cases.json.
//
// Rules (upstream infer_preview.py):
//   raw = trunc(duration_s * fps), capped by maxFrames (Flash's single window) when given;
//   frames = raw rounded DOWN to 4k+1 (1 stays 1); latentFrames = (frames - 1) / 4 + 1;
//   partial rounded down to 4k+1; chunks start at 0, the next one `partial - overlap` frames later
//   while a chunk ends before the clip, and the chunk that reaches the end is cut to the remaining
//   frames rounded down to 4k+1; chunks share `overlap` cross-faded frames, so the output has
//   sum(lengths) - overlap * (chunks - 1) frames (a last chunk shorter than the overlap adds none).

export const TEMPORAL_COMPRESSION = 4;

export function roundFrames(n) {
  return n === 1 ? 1 : Math.floor((n - 1) / TEMPORAL_COMPRESSION) * TEMPORAL_COMPRESSION + 1;
}

export function latentFrames(frames) {
  return Math.floor((frames - 1) / TEMPORAL_COMPRESSION) + 1;
}

export function planVideo(durationS, fps, partial, overlap, maxFrames = null) {
  if (!(fps > 0)) throw new RangeError(`fps must be positive, got ${fps}.`);
  let raw = Math.trunc(durationS * fps);
  if (maxFrames !== null && maxFrames !== undefined) raw = Math.min(raw, Math.trunc(maxFrames));
  if (!(raw >= 1)) {
    throw new RangeError(`${Number(durationS).toFixed(3)} s of audio at ${fps} fps is less than one frame; use a longer audio clip.`);
  }
  const frames = roundFrames(raw);
  const part = frames === 1 ? 1 : roundFrames(Math.trunc(partial));
  if (part < 1) throw new RangeError(`partial_video_length must be at least 1 frame, got ${partial}.`);
  if (frames > part && !(overlap >= 0 && overlap < part)) {
    throw new RangeError(`overlap (${overlap}) must be at least 0 and below the chunk length (${part} after rounding partial_video_length=${partial} to 4k+1); lower the overlap or raise partial_video_length.`);
  }
  const chunks = [];
  let start = 0;
  for (;;) {
    if (start + part >= frames) {
      chunks.push([start, roundFrames(frames - start)]);
      break;
    }
    chunks.push([start, part]);
    start += part - overlap;
  }
  let outputFrames = chunks[0][1];
  for (const [, n] of chunks.slice(1)) outputFrames += Math.max(0, n - overlap);
  return { frames, latentFrames: latentFrames(frames), partial: part, chunks, outputFrames, seconds: outputFrames / fps };
}

// One line for the node: "122 frames · 4.88 s · 32 latent · 2 chunks".
export function formatPlan(plan) {
  const chunks = plan.chunks.length === 1 ? "1 chunk" : `${plan.chunks.length} chunks`;
  return `${plan.outputFrames} frames · ${plan.seconds.toFixed(2)} s · ${plan.latentFrames} latent · ${chunks}`;
}
