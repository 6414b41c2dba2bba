import { test } from "node:test";
import assert from "node:assert/strict";
import { registerOnce } from "../lib/register.js";

// The frontend's rule (extensionStore.registerExtension): a second extension of a name throws.
function fakeApp() {
  const extensions = [];
  return {
    get extensions() { return extensions; },
    registerExtension(extension) {
      if (extensions.some((e) => e.name === extension.name)) {
        throw new Error(`Extension named '${extension.name}' already registered.`);
      }
      extensions.push(extension);
    },
  };
}

test("a second copy of the extension (web folder served twice) is skipped, not an error", () => {
  const app = fakeApp();
  const first = { name: "EchoMimicV3.ui" };
  assert.equal(registerOnce(app, first), true);
  assert.equal(registerOnce(app, { name: "EchoMimicV3.ui" }), false);
  assert.deepEqual(app.extensions, [first]);
});

test("other extensions do not block ours", () => {
  const app = fakeApp();
  app.registerExtension({ name: "Comfy.Other" });
  assert.equal(registerOnce(app, { name: "EchoMimicV3.ui" }), true);
  assert.equal(app.extensions.length, 2);
});
