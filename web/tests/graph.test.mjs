import { test } from "node:test";
import assert from "node:assert/strict";
import { widgetValue, sourceNode, findUpstream, inputFileUrl } from "../lib/graph.js";

function graphOf(nodes, links) {
  const byId = new Map(nodes.map((n) => [n.id, n]));
  return { links, getNodeById: (id) => byId.get(id) ?? null };
}

const loader = { id: 1, widgets: [{ name: "audio", value: "voices/a b.wav" }], inputs: [] };
const trim = { id: 2, widgets: [{ name: "start", value: 0 }], inputs: [{ name: "audio", type: "AUDIO", link: 10 }] };
const sampler = { id: 3, widgets: [{ name: "fps", value: 25 }], inputs: [{ name: "audio", type: "AUDIO", link: 11 }, { name: "image", type: "IMAGE", link: null }] };

test("follows links through pass-through audio nodes to the loader", () => {
  const graph = graphOf([loader, trim, sampler], { 10: { origin_id: 1 }, 11: { origin_id: 2 } });
  assert.equal(sourceNode(graph, sampler, "audio"), trim);
  assert.equal(sourceNode(graph, sampler, "image"), null);
  assert.equal(findUpstream(graph, sampler, "audio", (n) => widgetValue(n, "audio") !== undefined), loader);
  assert.equal(widgetValue(sampler, "fps"), 25);
});

test("a map of links (newer frontends) works too, and a dangling chain gives null", () => {
  const graph = graphOf([trim, sampler], new Map([[11, { origin_id: 2 }]]));
  assert.equal(findUpstream(graph, sampler, "audio", (n) => n.id === 1), null);
});

test("input file URLs split the sub-folder", () => {
  assert.equal(inputFileUrl("voices/a b.wav"), "/view?filename=a%20b.wav&type=input&subfolder=voices");
  assert.equal(inputFileUrl("x.mp3"), "/view?filename=x.mp3&type=input&subfolder=");
});
