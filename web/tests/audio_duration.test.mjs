import { test } from "node:test";
import assert from "node:assert/strict";
import { durationCache, comboLists, audioElementLoader } from "../lib/audio_duration.js";

test("a file is loaded once however often and however concurrently it is asked for", async () => {
  const loads = [];
  const cache = durationCache(async (name) => { loads.push(name); return 2.4; });
  const answers = await Promise.all(Array.from({ length: 38 }, () => cache.get("speech.wav")));
  assert.deepEqual(new Set(answers), new Set([2.4]));
  assert.equal(await cache.get("speech.wav"), 2.4);
  assert.deepEqual(loads, ["speech.wav"]);
});

test("misses are cached too: a failing or unreadable file is not asked for again", async () => {
  const loads = [];
  const cache = durationCache(async (name) => {
    loads.push(name);
    if (name === "gone.wav") throw new Error("404");
    return NaN;
  });
  assert.equal(await cache.get("gone.wav"), null);
  assert.equal(await cache.get("gone.wav"), null);
  assert.equal(await cache.get("noise.bin"), null);
  assert.deepEqual(loads, ["gone.wav", "noise.bin"]);
});

test("combo choices: listed, not listed, given by a function, unknown", () => {
  assert.equal(comboLists({ options: { values: ["a.wav", "b.wav"] } }, "a.wav"), true);
  assert.equal(comboLists({ options: { values: ["a.wav"] } }, "speech.wav"), false);
  assert.equal(comboLists({ options: { values: () => ["x.wav"] } }, "x.wav"), true);
  assert.equal(comboLists({ options: {} }, "x.wav"), true);
});

test("the browser loader reads the duration from the audio element's metadata", async () => {
  const made = [];
  const fakeAudio = () => {
    const audio = { duration: 3.5 };
    made.push(audio);
    return audio;
  };
  const load = audioElementLoader((name) => `/view?filename=${name}`, fakeAudio);
  const pending = load("a.wav");
  assert.equal(made[0].src, "/view?filename=a.wav");
  assert.equal(made[0].preload, "metadata");
  made[0].onloadedmetadata();
  assert.equal(await pending, 3.5);
  const failing = load("b.wav");
  made[1].onerror();
  await assert.rejects(failing, /cannot read b.wav/);
});
