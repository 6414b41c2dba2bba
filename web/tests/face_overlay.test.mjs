import { test } from "node:test";
import assert from "node:assert/strict";
import { drawImageRects, boxOnDrawnImage, lineWidthFor, watchDrawImage, BOX_COLOR } from "../lib/face_overlay.js";

test("the three drawImage forms give the source crop and the destination", () => {
  const img = [{}, 10, 20];
  assert.deepEqual(drawImageRects(img, 320, 200), { src: { x: 0, y: 0, w: 320, h: 200 }, dst: { x: 10, y: 20, w: 320, h: 200 } });
  assert.deepEqual(drawImageRects([{}, 10, 20, 160, 100], 320, 200).dst, { x: 10, y: 20, w: 160, h: 100 });
  const cropped = drawImageRects([{}, 100, 0, 200, 200, 5, 6, 50, 50], 320, 200);
  assert.deepEqual(cropped, { src: { x: 100, y: 0, w: 200, h: 200 }, dst: { x: 5, y: 6, w: 50, h: 50 } });
  assert.equal(drawImageRects([{}, 1], 320, 200), null);
});

test("a box lands where the image was drawn, scaled and offset (the issue's 320x200 example)", () => {
  // the block at x 200-280, y 50-120 of a 320x200 image drawn half size at (40, 300)
  const rects = drawImageRects([{}, 40, 300, 160, 100], 320, 200);
  assert.deepEqual(boxOnDrawnImage({ top: 50, bottom: 120, left: 200, right: 280 }, rects), { x: 140, y: 325, w: 40, h: 35 });
  // a cropped draw shifts by the crop's origin
  const crop = drawImageRects([{}, 100, 0, 200, 200, 0, 0, 100, 100], 320, 200);
  assert.deepEqual(boxOnDrawnImage({ top: 50, bottom: 120, left: 200, right: 280 }, crop), { x: 50, y: 25, w: 40, h: 35 });
});

test("the outline keeps its on-screen width at any zoom", () => {
  assert.equal(lineWidthFor({ a: 0.5, b: 0 }), 4);
  assert.equal(lineWidthFor({ a: 2, b: 0 }), 1);
  assert.equal(lineWidthFor(undefined), 2);
});

// A 2D context stand-in recording what is drawn.
function recordingContext() {
  const calls = [];
  const ctx = {
    calls,
    transform: { a: 1, b: 0 },
    drawImage(...args) { calls.push(["drawImage", args.length]); },
    strokeRect(...r) { calls.push(["strokeRect", r, this.strokeStyle, this.lineWidth]); },
    save() {}, restore() {},
    getTransform() { return this.transform; },
  };
  return ctx;
}

test("a watched image gets its boxes right after it is drawn, others nothing", () => {
  const ctx = recordingContext();
  const face = { naturalWidth: 320, naturalHeight: 200 };
  const other = { naturalWidth: 64, naturalHeight: 64 };
  const boxes = new Map([[face, [{ top: 50, bottom: 120, left: 200, right: 280 }]]]);
  watchDrawImage(ctx, (image) => boxes.get(image));
  watchDrawImage(ctx, () => { throw new Error("installed twice"); });
  ctx.drawImage(other, 0, 0, 64, 64);
  ctx.drawImage(face, 40, 300, 160, 100);
  assert.deepEqual(ctx.calls, [
    ["drawImage", 5],
    ["drawImage", 5],
    ["strokeRect", [141, 326, 38, 33], BOX_COLOR, 2], // inset by half the 2 px line
  ]);
  assert.equal(BOX_COLOR, "#00ff00");
});
