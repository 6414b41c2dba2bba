// Durations of audio files in ComfyUI's input folder, each file fetched at most once per page.
//
// A workflow load calls for the same file many times at once (every restored link of the sampler
// fires its connection hook), and a workflow may name a file this server does not have. So one
// promise per file is kept, hits and misses alike, and a file the Load Audio combo does not list
// is not requested at all: the server's own file list already says it is missing.

/**
 * A cache over `load(name) -> Promise<seconds>` (which may reject or resolve to a non-finite
 * value for a file that cannot be read). `get(name)` resolves to the seconds or null.
 */
export function durationCache(load) {
  const known = new Map(); // name -> Promise<number | null>
  return {
    get(name) {
      if (!known.has(name)) {
        const pending = Promise.resolve()
          .then(() => load(name))
          .then((seconds) => (Number.isFinite(seconds) && seconds > 0 ? seconds : null))
          .catch(() => null);
        known.set(name, pending);
      }
      return known.get(name);
    },
    // After an upload replaced a file under the same name.
    forget(name) {
      known.delete(name);
    },
    get size() {
      return known.size;
    },
  };
}

/** Whether a combo widget lists `value` among its choices (true when the choices are unknown). */
export function comboLists(widget, value) {
  let values = widget?.options?.values;
  if (typeof values === "function") values = values(widget);
  return Array.isArray(values) ? values.includes(value) : true;
}

/** `load` for durationCache in a browser: the duration from the file's metadata via an <audio>. */
export function audioElementLoader(urlOf, makeAudio = () => new Audio()) {
  return (name) =>
    new Promise((resolve, reject) => {
      const audio = makeAudio();
      audio.preload = "metadata";
      audio.onloadedmetadata = () => resolve(audio.duration);
      audio.onerror = () => reject(new Error(`cannot read ${name}`));
      audio.src = urlOf(name);
    });
}
