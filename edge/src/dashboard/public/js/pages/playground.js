/**
 * Playground: a generation request built from the model's own limits (/v1/models), its ready add-ons with scale
 * sliders, a ControlNet image uploaded or drawn, live progress over server-sent events (queue position, step i of n),
 * the images, and the exact request as curl and SDK snippets.
 */
import { api, followGeneration } from "../api.js";
import { loadAddons, loadModels } from "../catalog.js";
import { badge, card, copyButton, errorBox, field, fmtMs, h, replace, showError } from "../dom.js";
import { curlSnippet, sdkSnippet } from "../snippets.js";

const MAX_SEED = 2 ** 32 - 1;

export async function render(view) {
  const [models, addons] = await Promise.all([loadModels(), loadAddons()]);
  if (!models.length) {
    view.append(h("p", { class: "notice" }, "No model is available yet; an operator registers models."));
    return;
  }
  let stop = null;

  const prompt = h(
    "textarea",
    { name: "prompt", rows: "3", required: true, maxlength: "1000" },
    "a large red circle on the left, blue background",
  );
  const negative = h("textarea", { name: "negative_prompt", rows: "1", maxlength: "1000" });
  const model = h(
    "select",
    { name: "model" },
    models.map((m) => h("option", { value: m.id }, m.id)),
  );
  // The select names models as requests do (their id); what each is, in full, beneath it.
  const modelInfo = h("p", { class: "muted", id: "model-info" });
  model.setAttribute("aria-describedby", modelInfo.id);
  const sampler = h("select", { name: "sampler" });
  const steps = h("input", { type: "number", name: "steps", inputmode: "numeric" });
  const guidance = h("input", { type: "number", name: "guidance", step: "0.1", min: "0" });
  const seed = h("input", {
    type: "number",
    name: "seed",
    min: "0",
    max: String(MAX_SEED),
    placeholder: "random",
    inputmode: "numeric",
  });
  const width = h("input", { type: "number", name: "width", required: true });
  const height = h("input", { type: "number", name: "height", required: true });
  const n = h("input", { type: "number", name: "n", min: "1", value: "1", required: true });
  const loraBox = h("fieldset", { class: "addon-picks" });
  const controlBox = h("fieldset", { class: "addon-picks" });
  const curl = h("pre", { class: "snippet", id: "curl-snippet", tabindex: "0" });
  const sdk = h("pre", { class: "snippet", id: "sdk-snippet", tabindex: "0" });
  const error = errorBox();
  const submit = h("button", { type: "submit", id: "generate" }, "Generate");
  const result = h("div", { id: "result", "aria-live": "polite" });

  const current = () => models.find((m) => m.id === model.value);
  let control = { image: null };

  function onModel() {
    const m = current();
    const spec = m.spec;
    modelInfo.replaceChildren(
      `${m.display_name} · family ${m.family} · `,
      h("a", { href: "/dashboard/models" }, "limits"),
    );
    sampler.replaceChildren(
      ...Object.keys(spec.samplers).map((s) => h("option", { value: s, selected: s === spec.default_sampler }, s)),
    );
    for (const [el, v] of [
      [width, spec.default_width],
      [height, spec.default_height],
    ]) {
      Object.assign(el, { min: spec.min_size, max: spec.max_size, step: spec.multiple_of, value: v });
    }
    n.max = spec.max_images;
    onSampler();
    drawAddonPickers(m);
  }
  function onSampler() {
    const lim = current().spec.samplers[sampler.value];
    Object.assign(steps, {
      min: lim.min_steps,
      max: lim.max_steps,
      placeholder: `default ${lim.default_steps}`,
      value: "",
    });
    Object.assign(guidance, { max: lim.max_guidance, placeholder: `default ${lim.default_guidance}`, value: "" });
    updateSnippets();
  }

  function drawAddonPickers(m) {
    const usable = (kind) => addons.filter((a) => a.kind === kind && a.family === m.family && a.ready);
    const loras = m.spec.supports_lora ? usable("lora") : [];
    replace(
      loraBox,
      h("legend", {}, "LoRAs"),
      loras.length
        ? loras.map((a) => {
            const on = h("input", {
              type: "checkbox",
              name: "lora",
              value: `${a.id}@${a.ready.version}`,
              id: `lora-${a.id}`,
            });
            const scale = h("input", {
              type: "range",
              min: "-2",
              max: "2",
              step: "0.05",
              value: "1",
              id: `lora-scale-${a.id}`,
              "aria-label": `Scale of ${a.name}`,
            });
            const out = h("output", { for: scale.id }, "1.00");
            scale.oninput = () => (out.textContent = Number(scale.value).toFixed(2));
            return h(
              "div",
              { class: "pick", dataset: { addon: a.name } },
              h("label", { for: on.id }, on, ` ${a.name} v${a.ready.version}`),
              scale,
              out,
            );
          })
        : h(
            "p",
            { class: "muted" },
            m.spec.supports_lora ? "No ready LoRA for this model family." : "This model takes no LoRAs.",
          ),
    );
    const nets = m.spec.supports_controlnet ? usable("controlnet") : [];
    controlBox.hidden = !m.spec.supports_controlnet;
    controlBox.replaceChildren(h("legend", {}, "ControlNet"));
    if (!nets.length) {
      controlBox.append(h("p", { class: "muted" }, "No ready ControlNet for this model family."));
      return;
    }
    control = controlPicker(nets, m.spec.default_width, m.spec.default_height, updateSnippets);
    controlBox.append(control.element);
  }

  /** The request exactly as it is sent. */
  function body() {
    const b = { model: model.value, prompt: prompt.value };
    if (negative.value) b.negative_prompt = negative.value;
    b.sampler = sampler.value;
    if (steps.value) b.steps = Number(steps.value);
    if (guidance.value) b.guidance = Number(guidance.value);
    if (seed.value) b.seed = Number(seed.value);
    b.width = Number(width.value);
    b.height = Number(height.value);
    b.n = Number(n.value);
    const loras = [...loraBox.querySelectorAll("input[name=lora]:checked")].map((c) => ({
      id: c.value,
      scale: Number(c.closest(".pick").querySelector("input[type=range]").value),
    }));
    if (loras.length) b.loras = loras;
    const cn = control.value?.();
    if (cn) b.controlnets = [cn];
    return b;
  }
  function updateSnippets() {
    const b = body();
    curl.textContent = curlSnippet("POST", "/generations", b);
    sdk.textContent = sdkSnippet("generations.createAndWait", b);
  }

  model.onchange = onModel;
  sampler.onchange = onSampler;

  const form = h(
    "form",
    {
      "aria-label": "Generation request",
      oninput: updateSnippets,
      onchange: updateSnippets,
      onsubmit: async (e) => {
        e.preventDefault();
        showError(error, null);
        stop?.();
        submit.disabled = true;
        try {
          const g = await api("POST", "/generations", body());
          showProgress(result, g);
          stop = followGeneration(
            g.id,
            (u) => showProgress(result, u),
            () => (submit.disabled = false),
          );
        } catch (err) {
          showError(error, err);
          submit.disabled = false;
        }
      },
    },
    field("Prompt", prompt),
    field("Negative prompt", negative),
    h("div", { class: "row" }, field("Model", model), field("Sampler", sampler)),
    modelInfo,
    h(
      "div",
      { class: "row" },
      field("Steps", steps),
      field("Guidance", guidance),
      field("Seed", seed, "Empty: a random seed, recorded with the job."),
    ),
    h("div", { class: "row" }, field("Width", width), field("Height", height), field("Images", n)),
    loraBox,
    controlBox,
    h("div", { class: "actions" }, submit),
    error,
  );
  view.append(
    h(
      "div",
      { class: "split" },
      card("Request", form),
      h(
        "div",
        {},
        card("Result", result),
        card(
          "The same request from a program",
          h(
            "div",
            { class: "snippet-head" },
            h("h3", {}, "curl"),
            copyButton("Copy curl", () => curl.textContent),
          ),
          curl,
          h(
            "div",
            { class: "snippet-head" },
            h("h3", {}, "TypeScript SDK"),
            copyButton("Copy SDK call", () => sdk.textContent),
          ),
          sdk,
        ),
      ),
    ),
  );
  onModel();
  return () => stop?.();
}

async function queuePosition(g) {
  // Jobs are leased oldest first within a tenant: the ones queued before this one are ahead of it.
  const queued = await api("GET", "/generations?status=queued&limit=100");
  return queued.data.filter((j) => j.created_at <= g.created_at && j.id !== g.id).length + 1;
}

let positionAsked = 0;
function showProgress(box, g) {
  const total = g.progress?.total ?? g.request.steps;
  const step = g.progress?.step ?? (g.status === "succeeded" ? total : 0);
  const line = h("p", { id: "gen-status" }, badge(g.status), " ");
  if (g.status === "queued") {
    line.append(h("span", { class: "queue" }, "waiting for a runner…"));
    const asked = ++positionAsked;
    queuePosition(g)
      .then((p) => {
        if (asked === positionAsked) line.querySelector(".queue").textContent = `position ${p} in your queue`;
      })
      .catch(() => {});
  }
  if (g.status === "running") line.append(`step ${step} of ${total}`);
  if (g.status === "succeeded" && g.timings) line.append(`in ${fmtMs(g.timings.total_ms)} · seed ${g.request.seed}`);
  replace(
    box,
    line,
    h("label", { for: "gen-progress", class: "sr-only" }, "Progress"),
    h("progress", { id: "gen-progress", max: String(total), value: String(step) }),
    g.error ? h("p", { class: "error", role: "alert" }, `${g.error.message} (${g.error.code})`) : null,
    h(
      "div",
      { class: "images", id: "gen-images" },
      g.images
        .filter((i) => i.url)
        .map((i) =>
          h("img", {
            src: i.url,
            width: String(i.width),
            height: String(i.height),
            class: "result",
            alt: `Generated image ${i.index + 1} for "${g.request.prompt}"`,
          }),
        ),
    ),
    h("p", { class: "muted" }, h("a", { href: `/dashboard/jobs#${g.id}` }, g.id)),
  );
}

/** Picks a ControlNet and its control image: an uploaded picture or a mask drawn on a canvas, sent as a PNG data URL. */
function controlPicker(nets, width, height, onChange) {
  const net = h(
    "select",
    { name: "controlnet" },
    h("option", { value: "" }, "none"),
    nets.map((a) => h("option", { value: `${a.id}@${a.ready.version}` }, `${a.name} v${a.ready.version}`)),
  );
  const scale = h("input", {
    type: "range",
    min: "0",
    max: "2",
    step: "0.05",
    value: "1",
    "aria-label": "ControlNet scale",
  });
  const out = h("output", {}, "1.00");
  scale.oninput = () => (out.textContent = Number(scale.value).toFixed(2));
  const canvas = h("canvas", {
    width: String(width),
    height: String(height),
    class: "mask",
    "aria-label": "Control image: draw with a pointer; white marks where the shape goes",
  });
  const g = canvas.getContext("2d");
  const clear = () => {
    g.fillStyle = "#000";
    g.fillRect(0, 0, width, height);
    drawn = false;
    onChange();
  };
  let drawn = false;
  let drawing = false;
  const brush = h("input", {
    type: "range",
    min: "1",
    max: String(Math.max(2, Math.round(width / 4))),
    value: String(Math.max(1, Math.round(width / 12))),
    "aria-label": "Brush size",
  });
  const at = (e) => {
    const r = canvas.getBoundingClientRect();
    return [((e.clientX - r.left) / r.width) * width, ((e.clientY - r.top) / r.height) * height];
  };
  const dot = (e) => {
    const [x, y] = at(e);
    g.fillStyle = "#fff";
    g.beginPath();
    g.arc(x, y, Number(brush.value) / 2, 0, Math.PI * 2);
    g.fill();
    drawn = true;
  };
  canvas.addEventListener("pointerdown", (e) => {
    drawing = true;
    canvas.setPointerCapture(e.pointerId);
    dot(e);
  });
  canvas.addEventListener("pointermove", (e) => drawing && dot(e));
  canvas.addEventListener("pointerup", () => {
    drawing = false;
    onChange();
  });
  const upload = h("input", { type: "file", accept: "image/png,image/jpeg,image/webp" });
  upload.onchange = async () => {
    const f = upload.files[0];
    if (!f) return;
    const bitmap = await createImageBitmap(f);
    g.drawImage(bitmap, 0, 0, width, height);
    drawn = true;
    onChange();
  };
  clear();
  const element = h(
    "div",
    {},
    h(
      "div",
      { class: "row" },
      field("ControlNet", net),
      h("div", { class: "field" }, h("span", { class: "label" }, "Scale"), h("div", { class: "pick" }, scale, out)),
    ),
    h(
      "div",
      { class: "row" },
      field("Control image (upload)", upload),
      h(
        "div",
        { class: "field" },
        h("span", { class: "label" }, "…or draw a mask"),
        canvas,
        h(
          "div",
          { class: "pick" },
          h("span", {}, "Brush"),
          brush,
          h("button", { type: "button", class: "secondary small", onclick: clear }, "Clear"),
        ),
      ),
    ),
  );
  return {
    element,
    value: () =>
      net.value && drawn ? { id: net.value, image: canvas.toDataURL("image/png"), scale: Number(scale.value) } : null,
  };
}
