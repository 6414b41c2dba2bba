import { test } from "node:test";
import assert from "node:assert/strict";
import { planInputs, planKey, planText, NO_AUDIO } from "../lib/sampler_plan.js";

// Load Audio -> Audio Encode -> Sampler <- Model Loader, as plain objects.
function demoGraph() {
  const loader = { id: 1, inputs: [], widgets: [{ name: "audio", value: "a.wav", options: { values: ["a.wav", "b.wav"] } }] };
  const encode = { id: 2, widgets: [{ name: "fps", value: 25 }, { name: "max_frames", value: 0 }],
    inputs: [{ name: "audio", type: "AUDIO", link: 10 }] };
  const model = { id: 4, inputs: [], widgets: [{ name: "model", value: "echomimicv3_flash_demo_tiny.safetensors" }, { name: "variant", value: "auto" }] };
  const sampler = { id: 3,
    widgets: [{ name: "partial_video_length", value: 0 }, { name: "overlap_video_length", value: 8 }, { name: "long_video_mode", value: "chunks" },
      { name: "seam_search_frames", value: 12 }],
    inputs: [{ name: "model", type: "ECHOMIMIC_MODEL", link: 12 }, { name: "audio_embeds", type: "ECHOMIMIC_AUDIO_EMBEDS", link: 11 }] };
  const byId = new Map([loader, encode, sampler, model].map((n) => [n.id, n]));
  const graph = { links: { 10: { origin_id: 1 }, 11: { origin_id: 2 }, 12: { origin_id: 4 } }, getNodeById: (id) => byId.get(id) };
  return { graph, loader, encode, sampler, model };
}

test("the inputs come from the sampler, the nodes upstream and the model loader", () => {
  const { graph, sampler } = demoGraph();
  assert.deepEqual(planInputs(graph, sampler), {
    file: "a.wav", listed: true, fps: 25, maxFrames: null, partial: 0, overlap: 8, mode: "chunks", seamSearch: 12, variant: "flash",
  });
});

test("any upstream change changes the key: another file, fps, the model", () => {
  const { graph, loader, encode, sampler, model } = demoGraph();
  const keys = [planKey(planInputs(graph, sampler))];
  loader.widgets[0].value = "b.wav";
  keys.push(planKey(planInputs(graph, sampler)));
  encode.widgets[0].value = 30;
  keys.push(planKey(planInputs(graph, sampler)));
  model.widgets[0].value = "echomimicv3_preview.safetensors";
  keys.push(planKey(planInputs(graph, sampler)));
  assert.equal(new Set(keys).size, 4);
  assert.equal(planKey(planInputs(graph, sampler)), keys[3]); // and nothing else does
});

test("the line: the plan, a missing file, no audio, bad settings", () => {
  const { graph, loader, sampler } = demoGraph();
  const inputs = planInputs(graph, sampler);
  // flash: auto chunks of 81 frames
  assert.equal(planText(inputs, 10), "250 frames · 10.00 s · 64 latent · 4 chunks");
  // a longer seam search may shorten every chunk to 41 frames: the run may render up to 7
  sampler.widgets[3].value = 40;
  assert.equal(planText(planInputs(graph, sampler), 10), "250 frames · 10.00 s · 64 latent · 4–7 chunks");
  sampler.widgets.pop(); // a sampler saved before seam search: fixed seams
  assert.equal(planText(planInputs(graph, sampler), 10), "250 frames · 10.00 s · 64 latent · 4 chunks");
  assert.equal(planText(inputs, null), "cannot read the duration of a.wav");
  loader.widgets[0].value = "speech.wav";
  assert.equal(planText(planInputs(graph, sampler), 10), "speech.wav is not in ComfyUI's input folder");
  assert.equal(planText(null, 10), NO_AUDIO);
  sampler.widgets[1].value = 200;
  loader.widgets[0].value = "a.wav";
  assert.match(planText(planInputs(graph, sampler), 10), /overlap_video_length must be in \[0, 81\)/);
});
