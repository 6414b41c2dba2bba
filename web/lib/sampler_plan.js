// What the sampler's plan line depends on, read from the graph, and the line itself.
//
// The line must follow every upstream change (another file in Load Audio, fps on Audio Encode,
// the model loader's variant), and those happen on other nodes, whose hooks the sampler never
// hears. So the sampler collects its inputs whenever it is drawn and recomputes only when they
// differ from the last time (`planKey`): cheap, and nothing is missed.
import { planVideo, formatPlan, resolvePartial } from "./video_plan.js";
import { widgetValue, firstWidgetValue, findUpstream, sourceNode, modelVariant } from "./graph.js";
import { comboLists } from "./audio_duration.js";
import { SETTINGS } from "./facts.js";

// The sampler's audio arrives on one of these inputs; fps and max_frames are read from the
// sampler, else from the nodes on the way up to Load Audio (EchoMimicV3 Audio Encode).
export const AUDIO_INPUTS = ["audio", "audio_embeds"];
export const NO_AUDIO = "connect a Load Audio node to see the clip length";

const audioWidget = (node) => (node.widgets || []).find((w) => w.name === "audio");

/** The plan's inputs for a sampler node, or null when no Load Audio feeds it. */
export function planInputs(graph, node) {
  const found = findUpstream(graph, node, AUDIO_INPUTS, (n) => typeof widgetValue(n, "audio") === "string");
  if (!found) return null;
  const file = widgetValue(found.node, "audio");
  const chain = [node, ...found.path];
  return {
    file,
    listed: comboLists(audioWidget(found.node), file),
    fps: firstWidgetValue(chain, "fps") ?? SETTINGS.fps.default,
    maxFrames: firstWidgetValue(chain, "max_frames") || null, // 0 = no cap
    partial: widgetValue(node, "partial_video_length"),
    overlap: widgetValue(node, "overlap_video_length"),
    mode: widgetValue(node, "long_video_mode"),
    seamSearch: widgetValue(node, "seam_search_frames") ?? 0, // absent on older saved samplers
    variant: modelVariant(sourceNode(graph, node, "model")),
  };
}

/** Equal keys = the same plan line. */
export const planKey = (inputs) => JSON.stringify(inputs);

/** The sampler's line for `inputs` and the audio's duration (null: unreadable). */
export function planText(inputs, seconds) {
  if (!inputs) return NO_AUDIO;
  if (!inputs.listed) return `${inputs.file} is not in ComfyUI's input folder`;
  if (seconds === null || seconds === undefined) return `cannot read the duration of ${inputs.file}`;
  try {
    const partial = resolvePartial(inputs.partial, inputs.variant);
    return formatPlan(planVideo(seconds, inputs.fps, partial, inputs.overlap, inputs.maxFrames, inputs.seamSearch), inputs.mode);
  } catch (e) {
    return e.message;
  }
}
