import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { planVideo, formatPlan, roundDown4k1, roundUp4k1, fpsFraction, resolvePartial } from "../lib/video_plan.js";

const table = JSON.parse(readFileSync(new URL("./video_plan_cases.json", import.meta.url), "utf8"));

for (const c of table.cases) {
  test(`plan ${c.duration_s}s @${c.fps}fps partial ${c.partial} overlap ${c.overlap}`, () => {
    const plan = planVideo(c.duration_s, c.fps, c.partial, c.overlap, c.max_frames ?? null, c.seam_search ?? 0);
    assert.equal(plan.frames, c.expect.frames);
    assert.equal(plan.latentFrames, c.expect.latent_frames);
    assert.equal(plan.partial, c.expect.partial);
    assert.deepEqual(plan.chunks, c.expect.chunks);
    assert.equal(plan.mostChunks, c.expect.most_chunks ?? c.expect.chunks.length);
    assert.ok(Math.abs(plan.seconds - c.expect.frames / c.fps) < 1e-9);
    assert.equal(formatPlan(plan), c.expect.line); // tests/nodes/test_video_plan.py holds plan_line to it
  });
}

for (const c of table.errors) {
  test(`rejects: ${c.match}`, () => {
    assert.throws(() => planVideo(c.duration_s, c.fps, c.partial, c.overlap),
      (e) => e instanceof RangeError && e.message.includes(c.match));
  });
}

test("rounding to 4k+1", () => {
  assert.deepEqual([1, 2, 5, 8, 9, 112, 113, 114].map(roundDown4k1), [1, 1, 5, 5, 9, 109, 113, 113]);
  assert.deepEqual([1, 2, 5, 8, 9, 112, 113, 114].map(roundUp4k1), [1, 5, 5, 9, 9, 113, 113, 117]);
});

test("fps as a fraction, as Python's limit_denominator(1001)", () => {
  assert.deepEqual(fpsFraction(25), [25, 1]);
  assert.deepEqual(fpsFraction(30000 / 1001), [30000, 1001]);
  assert.deepEqual(fpsFraction(29.97), [2997, 100]);
  assert.deepEqual(fpsFraction(12.5), [25, 2]);
});

test("formatted line", () => {
  assert.equal(formatPlan(planVideo(5, 25, 113, 8)), "125 frames · 5.00 s · 32 latent · 2 chunks");
  assert.equal(formatPlan(planVideo(3, 25, 113, 8)), "75 frames · 3.00 s · 20 latent · 1 chunk");
  // sliding mode cuts latent windows, not these chunks: no chunk count that the run would contradict
  assert.equal(formatPlan(planVideo(5, 25, 113, 8), "sliding"), "125 frames · 5.00 s · 32 latent · sliding windows");
  // seam search may shorten chunks to put seams in pauses: the range of chunks the run may render
  assert.equal(formatPlan(planVideo(2.4, 25, 33, 4, null, 12)), "60 frames · 2.40 s · 16 latent · 2–3 chunks");
  assert.equal(formatPlan(planVideo(2.4, 25, 33, 4, null, 12), "sliding"), "60 frames · 2.40 s · 16 latent · sliding windows");
});

test("partial_video_length 0 is the variant's chunk length", () => {
  assert.equal(resolvePartial(0, "flash"), 81);
  assert.equal(resolvePartial(0, "preview"), 113);
  assert.equal(resolvePartial(0, undefined), 113);
  assert.equal(resolvePartial(65, "flash"), 65);
});
