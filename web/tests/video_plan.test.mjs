import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { planVideo, formatPlan, roundFrames } from "../lib/video_plan.js";

const table = JSON.parse(readFileSync(new URL("./video_plan_cases.json", import.meta.url), "utf8"));

for (const c of table.cases) {
  test(`plan ${c.duration_s}s @${c.fps}fps partial ${c.partial} overlap ${c.overlap}`, () => {
    const plan = planVideo(c.duration_s, c.fps, c.partial, c.overlap, c.max_frames ?? null);
    assert.equal(plan.frames, c.expect.frames);
    assert.equal(plan.latentFrames, c.expect.latent_frames);
    assert.equal(plan.partial, c.expect.partial);
    assert.deepEqual(plan.chunks, c.expect.chunks);
    assert.equal(plan.outputFrames, c.expect.output_frames);
    assert.ok(Math.abs(plan.seconds - c.expect.output_frames / c.fps) < 1e-9);
  });
}

for (const c of table.errors) {
  test(`rejects: ${c.match}`, () => {
    assert.throws(() => planVideo(c.duration_s, c.fps, c.partial, c.overlap), (e) => e instanceof RangeError && e.message.includes(c.match));
  });
}

test("rounding to 4k+1", () => {
  assert.deepEqual([1, 2, 5, 8, 9, 112, 113, 114].map(roundFrames), [1, 1, 5, 5, 9, 109, 113, 113]);
});

test("formatted line", () => {
  assert.equal(formatPlan(planVideo(5, 25, 113, 8)), "122 frames · 4.88 s · 32 latent · 2 chunks");
  assert.equal(formatPlan(planVideo(3, 25, 113, 8)), "73 frames · 2.92 s · 19 latent · 1 chunk");
});
