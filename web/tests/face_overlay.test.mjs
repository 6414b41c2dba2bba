import { test } from "node:test";
import assert from "node:assert/strict";
import { fitImage, boxToCanvas, tokenGridBox, previewArea } from "../lib/face_overlay.js";

test("a wide image is fitted to the area width and centred vertically", () => {
  const fit = fitImage(200, 100, { x: 10, y: 20, w: 100, h: 100 });
  assert.deepEqual(fit, { x: 10, y: 45, w: 100, h: 50, scale: 0.5 });
  assert.equal(fitImage(0, 100, { x: 0, y: 0, w: 10, h: 10 }), null);
});

test("a box lands on the fitted image", () => {
  const fit = fitImage(200, 100, { x: 10, y: 20, w: 100, h: 100 });
  assert.deepEqual(boxToCanvas({ x1: 40, y1: 20, x2: 120, y2: 80 }, fit), { x: 30, y: 55, w: 40, h: 30 });
});

test("the token-grid box floors each edge on the 16-px grid of the sampled size", () => {
  // 1536x1536 source sampled at 768x768: ratio 0.5; x1=100 -> 50 px -> token 3 -> 48 px -> 96 source px.
  const snapped = tokenGridBox({ x1: 100, y1: 64, x2: 700, y2: 1000 }, 1536, 1536, 768, 768);
  assert.deepEqual(snapped, { x1: 96, y1: 64, x2: 672, y2: 992 });
});

test("the preview area starts below the widgets", () => {
  assert.deepEqual(previewArea([300, 400], 100), { x: 4, y: 104, w: 292, h: 292 });
});
