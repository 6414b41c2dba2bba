// EchoMimicV3 frontend extension: shows the clip length / chunk plan on the sampler node and
// draws the detected face box over the reference-image preview. The logic lives in ./lib/.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { planVideo, formatPlan, resolvePartial } from "./lib/video_plan.js";
import { fitImage, boxToCanvas, previewArea } from "./lib/face_overlay.js";
import { widgetValue, firstWidgetValue, findUpstream, inputFileUrl, sourceNode, modelVariant } from "./lib/graph.js";
import { registerOnce } from "./lib/register.js";

// A node shows the plan when it has these widgets (the sampler). Its audio comes in on "audio" or
// "audio_embeds"; fps and max_frames are read from the node, else from the audio nodes upstream.
const PLAN_WIDGETS = ["partial_video_length", "overlap_video_length"];
const AUDIO_INPUTS = ["audio", "audio_embeds"];
const durations = new Map(); // audio file name -> seconds (decoded once per file)

function audioDuration(name) {
  if (durations.has(name)) return Promise.resolve(durations.get(name));
  return new Promise((resolve) => {
    const audio = new Audio();
    audio.preload = "metadata";
    audio.onloadedmetadata = () => { durations.set(name, audio.duration); resolve(audio.duration); };
    audio.onerror = () => resolve(null);
    audio.src = api.apiURL(inputFileUrl(name));
  });
}

async function refreshPlan(node) {
  const found = findUpstream(app.graph, node, AUDIO_INPUTS, (n) => typeof widgetValue(n, "audio") === "string");
  const name = found ? widgetValue(found.node, "audio") : undefined;
  let text = "connect a Load Audio node to see the clip length";
  if (name) {
    const seconds = await audioDuration(name);
    const chain = [node, ...found.path];
    try {
      if (seconds === null) throw new Error(`cannot read the duration of ${name}`);
      const fps = firstWidgetValue(chain, "fps") ?? 25;
      const maxFrames = firstWidgetValue(chain, "max_frames") || null;  // 0 = no cap
      // 0 = the variant's chunk length; the variant comes from the model loader's widgets
      const partial = resolvePartial(widgetValue(node, "partial_video_length"),
        modelVariant(sourceNode(app.graph, node, "model")));
      text = formatPlan(planVideo(seconds, fps, partial,
        widgetValue(node, "overlap_video_length"), maxFrames), widgetValue(node, "long_video_mode"));
    } catch (e) {
      text = e.message;
    }
  }
  node.echomimicPlanText = text;
  node.setDirtyCanvas(true, false);
}

registerOnce(app, {
  name: "EchoMimicV3.ui",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category || !nodeData.category.startsWith("EchoMimicV3")) return;
    const required = { ...(nodeData.input?.required || {}), ...(nodeData.input?.optional || {}) };
    const showsPlan = PLAN_WIDGETS.every((name) => name in required);

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.echomimic_face_boxes) this.echomimicFaceBoxes = message.echomimic_face_boxes;
      if (message?.echomimic_plan) this.echomimicPlanText = message.echomimic_plan[0];
    };

    if (showsPlan) {
      const onConnectionsChange = nodeType.prototype.onConnectionsChange;
      nodeType.prototype.onConnectionsChange = function () {
        onConnectionsChange?.apply(this, arguments);
        refreshPlan(this);
      };
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        onConfigure?.apply(this, arguments);
        // links are restored after the nodes when a workflow loads: measure once the graph is whole
        setTimeout(() => refreshPlan(this), 0);
      };
      const onWidgetChanged = nodeType.prototype.onWidgetChanged;
      nodeType.prototype.onWidgetChanged = function () {
        onWidgetChanged?.apply(this, arguments);
        refreshPlan(this);
      };
    }

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return;
      if (this.echomimicPlanText) {
        ctx.save();
        ctx.fillStyle = "#9ad";
        ctx.font = "12px sans-serif";
        ctx.fillText(this.echomimicPlanText, 8, this.size[1] - 8);
        ctx.restore();
      }
      const image = this.imgs?.[0];
      if (!this.echomimicFaceBoxes || !image?.naturalWidth) return;
      const last = this.widgets?.[this.widgets.length - 1];
      const bottom = last ? (last.last_y ?? 0) + (last.computeSize?.(this.size[0])[1] ?? 20) : 0;
      const fit = fitImage(image.naturalWidth, image.naturalHeight, previewArea(this.size, bottom));
      if (!fit) return;
      ctx.save();
      ctx.strokeStyle = "#0f0";
      ctx.lineWidth = 2;
      for (const box of this.echomimicFaceBoxes) {
        const r = boxToCanvas(box, fit);
        ctx.strokeRect(r.x, r.y, r.w, r.h);
      }
      ctx.restore();
    };
  },
});
