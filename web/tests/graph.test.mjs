import { test } from "node:test";
import assert from "node:assert/strict";
import { widgetValue, firstWidgetValue, sourceNode, findUpstream, inputFileUrl, modelVariant } from "../lib/graph.js";

function graphOf(nodes, links) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { links, getNodeById: (id) => byId.get(id) ?? null };
}

const loader = { id: 1, widgets: [{ name: "audio", value: "voices/a b.wav" }], inputs: [] };
const encode = { id: 2, widgets: [{ name: "fps", value: 30 }, { name: "max_frames", value: 81 }],
  inputs: [{ name: "audio_encoder", type: "ECHOMIMIC_AUDIO_ENCODER", link: 9 }, { name: "audio", type: "AUDIO", link: 10 }] };
const sampler = { id: 3, widgets: [{ name: "partial_video_length", value: 113 }],
  inputs: [{ name: "image", type: "IMAGE", link: null }, { name: "audio_embeds", type: "ECHOMIMIC_AUDIO_EMBEDS", link: 11 }] };
const hasAudioFile = (n) => typeof widgetValue(n, "audio") === "string";

test("follows links through the audio encoder to the loader, collecting the path", () => {
  const graph = graphOf([loader, encode, sampler], { 9: { origin_id: 7 }, 10: { origin_id: 1 }, 11: { origin_id: 2 } });
  assert.equal(sourceNode(graph, sampler, "audio_embeds"), encode);
  assert.equal(sourceNode(graph, sampler, "image"), null);
  const found = findUpstream(graph, sampler, ["audio", "audio_embeds"], hasAudioFile);
  assert.equal(found.node, loader);
  assert.deepEqual(found.path, [encode]);
  assert.equal(firstWidgetValue([sampler, ...found.path], "fps"), 30);
  assert.equal(firstWidgetValue([sampler], "fps"), undefined);
});

test("a map of links (newer frontends) works too, and a dangling chain gives null", () => {
  const graph = graphOf([encode, sampler], new Map([[11, { origin_id: 2 }]]));
  assert.equal(findUpstream(graph, sampler, "audio_embeds", hasAudioFile), null);
  assert.equal(findUpstream(graph, sampler, "audio", hasAudioFile), null);
});

test("input file URLs split the sub-folder", () => {
  assert.equal(inputFileUrl("voices/a b.wav"), "/view?filename=a%20b.wav&type=input&subfolder=voices");
  assert.equal(inputFileUrl("x.mp3"), "/view?filename=x.mp3&type=input&subfolder=");
});

test("model variant from the loader's widgets", () => {
  const loaderOf = (model, variant) => ({ widgets: [{ name: "model", value: model }, { name: "variant", value: variant }] });
  assert.equal(modelVariant(loaderOf("echomimicv3_flash_pro.safetensors", "auto")), "flash");
  assert.equal(modelVariant(loaderOf("echomimicv3_preview.safetensors", "auto")), "preview");
  assert.equal(modelVariant(loaderOf("wan_fun_inp.safetensors", "flash")), "flash");
  assert.equal(modelVariant(null), undefined);
});
