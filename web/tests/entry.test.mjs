import { test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, mkdirSync, writeFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const WEB = fileURLToPath(new URL("..", import.meta.url));

// The page layout ComfyUI serves: /scripts/app.js, /scripts/api.js and each registered web folder
// under /extensions/<name>/. A real ComfyUI 0.3.64 served ours as both "echomimic" (WEB_DIRECTORY)
// and "echomimic-v3-nodes" (pyproject's [tool.comfy] web), so the page imports the entry twice.
function servedTwice() {
  const root = mkdtempSync(join(tmpdir(), "echomimic-web-"));
  mkdirSync(join(root, "scripts"));
  writeFileSync(join(root, "scripts", "app.js"), `
    const extensions = [];
    export const app = {
      graph: null,
      get extensions() { return extensions; },
      registerExtension(extension) {
        if (extensions.some((e) => e.name === extension.name)) {
          throw new Error("Extension named '" + extension.name + "' already registered.");
        }
        extensions.push(extension);
      },
    };`);
  writeFileSync(join(root, "scripts", "api.js"), "export const api = { apiURL: (path) => path };");
  for (const name of ["echomimic", "echomimic-v3-nodes"]) {
    cpSync(join(WEB, "echomimic.js"), join(root, "extensions", name, "echomimic.js"));
    cpSync(join(WEB, "lib"), join(root, "extensions", name, "lib"), { recursive: true });
  }
  return root;
}

test("the entry loaded from two web folders registers one extension and throws nothing", async () => {
  const root = servedTwice();
  try {
    for (const name of ["echomimic", "echomimic-v3-nodes"]) {
      await import(pathToFileURL(join(root, "extensions", name, "echomimic.js")).href);
    }
    const { app } = await import(pathToFileURL(join(root, "scripts", "app.js")).href);
    assert.deepEqual(app.extensions.map((e) => e.name), ["EchoMimicV3.ui"]);

    // The registered hooks attach to the sampler (it has the plan widgets): it measures its plan
    // when drawn, keeps a run's plan until an input changes, and follows upstream changes.
    class Sampler {}
    await app.extensions[0].beforeRegisterNodeDef(Sampler, {
      category: "EchoMimicV3",
      input: { required: { partial_video_length: ["INT", {}] }, optional: { overlap_video_length: ["INT", {}] } },
    });
    const loader = { id: 1, inputs: [], widgets: [{ name: "audio", value: "speech.wav", options: { values: ["a.wav"] } }] };
    const node = Object.assign(new Sampler(), {
      id: 2, size: [400, 300], setDirtyCanvas() {},
      widgets: [{ name: "partial_video_length", value: 0 }, { name: "overlap_video_length", value: 8 }],
      inputs: [{ name: "audio", type: "AUDIO", link: 5 }],
    });
    node.graph = { links: { 5: { origin_id: 1 } }, getNodeById: (id) => (id === 1 ? loader : null) };
    const drawn = [];
    const ctx = { save() {}, restore() {}, fillText: (text) => drawn.push(text) };
    node.onDrawForeground(ctx);
    assert.equal(node.echomimicPlanText, "speech.wav is not in ComfyUI's input folder");
    node.onExecuted({ echomimic_plan: ["60 frames · 2.40 s · 16 latent · 3 chunks · 96x96, Flow × 4 steps"] });
    node.onDrawForeground(ctx);
    assert.equal(drawn.at(-1), "60 frames · 2.40 s · 16 latent · 3 chunks · 96x96, Flow × 4 steps");
    loader.widgets[0].value = "other.wav"; // another file picked upstream
    node.onDrawForeground(ctx);
    assert.equal(drawn.at(-1), "other.wav is not in ComfyUI's input folder");

    class Other {}
    await app.extensions[0].beforeRegisterNodeDef(Other, { category: "loaders", input: {} });
    assert.equal(Other.prototype.onExecuted, undefined);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
});
