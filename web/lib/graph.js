// Small helpers over the LiteGraph node graph, written against the few members they use so they
// can be tested with plain objects: node.inputs[{name, link}], graph.links[id] -> {origin_id},
// graph.getNodeById(id), node.widgets[{name, value}], node.comfyClass / node.type.

export function widgetValue(node, name) {
  const widget = (node.widgets || []).find((w) => w.name === name);
  return widget ? widget.value : undefined;
}

// The node feeding input `inputName` of `node`, or null.
export function sourceNode(graph, node, inputName) {
  const input = (node.inputs || []).find((i) => i.name === inputName);
  if (!input || input.link === null || input.link === undefined) return null;
  const link = graph.links instanceof Map ? graph.links.get(input.link) : graph.links[input.link];
  return link ? graph.getNodeById(link.origin_id) : null;
}

// Walk upstream from `node` through `inputName` (and then through pass-through nodes' first
// input of the same type) until `predicate(node)` holds; null if the chain ends first.
export function findUpstream(graph, node, inputName, predicate, maxDepth = 16) {
  let current = sourceNode(graph, node, inputName);
  for (let depth = 0; current && depth < maxDepth; depth++) {
    if (predicate(current)) return current;
    const next = (current.inputs || []).find((i) => i.type === "AUDIO" && i.link !== null && i.link !== undefined);
    current = next ? sourceNode(graph, current, next.name) : null;
  }
  return null;
}

// /view URL of a file in ComfyUI's input folder as a combo widget names it ("sub/dir/file.wav").
export function inputFileUrl(value) {
  const cut = value.lastIndexOf("/");
  const subfolder = cut < 0 ? "" : value.slice(0, cut);
  const filename = cut < 0 ? value : value.slice(cut + 1);
  return `/view?filename=${encodeURIComponent(filename)}&type=input&subfolder=${encodeURIComponent(subfolder)}`;
}
