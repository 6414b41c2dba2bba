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

// Types an audio chain passes through on its way from Load Audio to the sampler.
export const AUDIO_TYPES = ["AUDIO", "ECHOMIMIC_AUDIO_EMBEDS"];

// Walk upstream from `node` through the first linked input among `inputNames`, then through each
// node's first linked input of one of `types`, until `predicate(node)` holds. Returns
// {node, path} (path: the nodes passed on the way, nearest first) or null if the chain ends.
export function findUpstream(graph, node, inputNames, predicate, types = AUDIO_TYPES, maxDepth = 16) {
  const names = Array.isArray(inputNames) ? inputNames : [inputNames];
  const linked = (i) => i.link !== null && i.link !== undefined;
  const first = (node.inputs || []).find((i) => names.includes(i.name) && linked(i));
  let current = first ? sourceNode(graph, node, first.name) : null;
  const path = [];
  for (let depth = 0; current && depth < maxDepth; depth++) {
    if (predicate(current)) return { node: current, path };
    path.push(current);
    const next = (current.inputs || []).find((i) => types.includes(i.type) && linked(i));
    current = next ? sourceNode(graph, current, next.name) : null;
  }
  return null;
}

// The first of `nodes` that has widget `name`, or undefined.
export function firstWidgetValue(nodes, name) {
  for (const n of nodes) {
    const value = widgetValue(n, name);
    if (value !== undefined) return value;
  }
  return undefined;
}

// /view URL of a file in ComfyUI's input folder as a combo widget names it ("sub/dir/file.wav").
export function inputFileUrl(value) {
  const cut = value.lastIndexOf("/");
  const subfolder = cut < 0 ? "" : value.slice(0, cut);
  const filename = cut < 0 ? value : value.slice(cut + 1);
  return `/view?filename=${encodeURIComponent(filename)}&type=input&subfolder=${encodeURIComponent(subfolder)}`;
}

// "flash" or "preview" for a model loader node: its variant widget, else a guess from the file name
// ("echomimicv3_flash_pro.safetensors"); undefined when unknown.
export function modelVariant(loader) {
  if (!loader) return undefined;
  const variant = widgetValue(loader, "variant");
  if (variant === "flash" || variant === "preview") return variant;
  const file = widgetValue(loader, "model");
  if (typeof file !== "string") return undefined;
  return file.toLowerCase().includes("flash") ? "flash" : "preview";
}
