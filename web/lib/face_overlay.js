// Geometry for drawing the detected face box over the reference-image preview of a node.
// Boxes are {x1, y1, x2, y2} in source-image pixels (the face-region node's ui output).

// Where an image of imgW x imgH lands when fitted (aspect kept, centred) into an area, as
// LiteGraph/ComfyUI draw node image previews.
export function fitImage(imgW, imgH, area) {
  if (!(imgW > 0 && imgH > 0 && area.w > 0 && area.h > 0)) return null;
  const scale = Math.min(area.w / imgW, area.h / imgH);
  const w = imgW * scale;
  const h = imgH * scale;
  return { x: area.x + (area.w - w) / 2, y: area.y + (area.h - h) / 2, w, h, scale };
}

// The box in canvas coordinates of a fitted image.
export function boxToCanvas(box, fit) {
  return {
    x: fit.x + box.x1 * fit.scale,
    y: fit.y + box.y1 * fit.scale,
    w: (box.x2 - box.x1) * fit.scale,
    h: (box.y2 - box.y1) * fit.scale,
  };
}

// Area left for an image preview below a node's widgets (node-local coordinates).
export function previewArea(nodeSize, widgetsBottom, margin = 4) {
  const y = widgetsBottom + margin;
  return { x: margin, y, w: nodeSize[0] - 2 * margin, h: nodeSize[1] - y - margin };
}
