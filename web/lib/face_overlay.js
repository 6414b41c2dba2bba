// The detected face boxes drawn over the image they were found in, wherever the frontend draws it.
// Boxes are {top, bottom, left, right} in source-image pixels (EchoMimicV3 Face Mask's ui output:
// echomimic_core.boxes.Box, the project's one box convention).
//
// The frontend lays node image previews out itself, and that layout changes between versions
// (frontend 1.35: an appended "$$canvas-image-preview" widget, the image centred in it, never
// upscaled, drawn in a deferred pass after the nodes). So the overlay does not recompute it: it
// watches the canvas context's drawImage and, right after a watched image is drawn, strokes its
// boxes in the rectangle the image was just drawn to, under the same transform (any node size,
// any zoom, one image or a grid).

export const BOX_COLOR = "#00ff00";
export const BOX_LINE_PX = 2; // on screen, whatever the zoom

const WATCHED = Symbol("echomimicFaceOverlay");

/**
 * Source crop and destination rectangle of a drawImage call: (image, dx, dy),
 * (image, dx, dy, dw, dh) or (image, sx, sy, sw, sh, dx, dy, dw, dh); null for anything else.
 */
export function drawImageRects(args, naturalWidth, naturalHeight) {
  const n = Array.from(args).slice(1).map(Number);
  const whole = { x: 0, y: 0, w: naturalWidth, h: naturalHeight };
  if (n.length === 2) return { src: whole, dst: { x: n[0], y: n[1], w: naturalWidth, h: naturalHeight } };
  if (n.length === 4) return { src: whole, dst: { x: n[0], y: n[1], w: n[2], h: n[3] } };
  if (n.length === 8) return { src: { x: n[0], y: n[1], w: n[2], h: n[3] }, dst: { x: n[4], y: n[5], w: n[6], h: n[7] } };
  return null;
}

/** A box in image pixels -> {x, y, w, h} where it lands in a drawn image's destination rectangle. */
export function boxOnDrawnImage(box, rects) {
  const sx = rects.dst.w / rects.src.w;
  const sy = rects.dst.h / rects.src.h;
  return {
    x: rects.dst.x + (box.left - rects.src.x) * sx,
    y: rects.dst.y + (box.top - rects.src.y) * sy,
    w: (box.right - box.left) * sx,
    h: (box.bottom - box.top) * sy,
  };
}

/** Line width in context units that shows as `px` device pixels under `transform` (a DOMMatrix). */
export function lineWidthFor(transform, px = BOX_LINE_PX) {
  const scale = Math.hypot(transform?.a ?? 1, transform?.b ?? 0);
  return scale > 0 ? px / scale : px;
}

/**
 * Make `ctx` stroke `boxesOf(image)` (an array of boxes, or undefined for images nobody watches)
 * over each image it draws, right after drawing it. Installing on the same context twice is a no-op.
 */
export function watchDrawImage(ctx, boxesOf) {
  if (ctx[WATCHED]) return ctx;
  const drawImage = ctx.drawImage;
  ctx.drawImage = function (image) {
    const result = drawImage.apply(this, arguments);
    const boxes = boxesOf(image);
    if (boxes?.length) {
      const rects = drawImageRects(arguments, image.naturalWidth ?? image.width, image.naturalHeight ?? image.height);
      if (rects && rects.src.w > 0 && rects.src.h > 0) strokeBoxes(this, boxes, rects);
    }
    return result;
  };
  ctx[WATCHED] = true;
  return ctx;
}

function strokeBoxes(ctx, boxes, rects) {
  ctx.save();
  ctx.filter = "none"; // the frontend brightens a hovered preview with a filter; the box stays pure green
  ctx.globalAlpha = 1;
  ctx.strokeStyle = BOX_COLOR;
  const width = lineWidthFor(ctx.getTransform?.());
  ctx.lineWidth = width;
  for (const box of boxes) {
    const r = boxOnDrawnImage(box, rects);
    // inset by half the line, so the outline lies inside the box (and inside the image)
    ctx.strokeRect(r.x + width / 2, r.y + width / 2, Math.max(r.w - width, 0), Math.max(r.h - width, 0));
  }
  ctx.restore();
}
