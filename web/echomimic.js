// EchoMimicV3 frontend extension: shows the clip length / chunk plan on the sampler node and
// draws the detected face box over the Face Mask node's image. The logic lives in ./lib/.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";
import { watchDrawImage } from "./lib/face_overlay.js";
import { inputFileUrl } from "./lib/graph.js";
import { durationCache, audioElementLoader } from "./lib/audio_duration.js";
import { planInputs, planKey, planText } from "./lib/sampler_plan.js";
import { registerOnce } from "./lib/register.js";

// A node shows the plan when it has these widgets (the sampler).
const PLAN_WIDGETS = ["partial_video_length", "overlap_video_length"];
const durations = durationCache(audioElementLoader((name) => api.apiURL(inputFileUrl(name))));
const faceBoxes = new WeakMap(); // preview image element -> the boxes found in it

// Recompute the plan line when what it depends on changed since the last call (see sampler_plan.js).
function updatePlan(node) {
  const inputs = planInputs(node.graph ?? app.graph, node);
  const key = planKey(inputs);
  if (key === node.echomimicPlanKey) return;
  node.echomimicPlanKey = key;
  if (!inputs?.listed) {
    node.echomimicPlanText = planText(inputs, null);
    return;
  }
  durations.get(inputs.file).then((seconds) => {
    if (node.echomimicPlanKey !== key) return; // the inputs changed while the file was read
    node.echomimicPlanText = planText(inputs, seconds);
    node.setDirtyCanvas?.(true, false);
  });
}

registerOnce(app, {
  name: "EchoMimicV3.ui",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData.category || !nodeData.category.startsWith("EchoMimicV3")) return;
    const inputs = { ...(nodeData.input?.required || {}), ...(nodeData.input?.optional || {}) };
    const showsPlan = PLAN_WIDGETS.every((name) => name in inputs);

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.echomimic_face_boxes) this.echomimicFaceBoxes = message.echomimic_face_boxes;
      // the run's exact plan stays until one of the plan's inputs changes
      if (message?.echomimic_plan) this.echomimicPlanText = message.echomimic_plan[0];
    };

    if (showsPlan) {
      const onConfigure = nodeType.prototype.onConfigure;
      nodeType.prototype.onConfigure = function () {
        onConfigure?.apply(this, arguments);
        this.echomimicPlanKey = undefined; // a loaded workflow: measure again once drawn
      };
    }

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return;
      if (showsPlan) {
        updatePlan(this);
        if (this.echomimicPlanText) {
          ctx.save();
          ctx.fillStyle = "#9ad";
          ctx.font = "12px sans-serif";
          ctx.fillText(this.echomimicPlanText, 8, this.size[1] - 8);
          ctx.restore();
        }
      }
      const image = this.imgs?.[0];
      if (this.echomimicFaceBoxes && image) {
        faceBoxes.set(image, this.echomimicFaceBoxes);
        watchDrawImage(ctx, (drawn) => faceBoxes.get(drawn));
      }
    };
  },
});
