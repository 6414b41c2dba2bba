import { test } from "node:test";
import assert from "node:assert/strict";
import { fitImage, boxToCanvas, previewArea } from "../lib/face_overlay.js";

test("a wide image is fitted to the area width and centred vertically", () => {
  const fit = fitImage(200, 100, { x: 10, y: 20, w: 100, h: 100 });
  assert.deepEqual(fit, { x: 10, y: 45, w: 100, h: 50, scale: 0.5 });
  assert.equal(fitImage(0, 100, { x: 0, y: 0, w: 10, h: 10 }), null);
});

test("a box lands on the fitted image", () => {
  const fit = fitImage(200, 100, { x: 10, y: 20, w: 100, h: 100 });
  assert.deepEqual(boxToCanvas({ x1: 40, y1: 20, x2: 120, y2: 80 }, fit), { x: 30, y: 55, w: 40, h: 30 });
});

test("the preview area starts below the widgets", () => {
  assert.deepEqual(previewArea([300, 400], 100), { x: 4, y: 104, w: 292, h: 292 });
});
