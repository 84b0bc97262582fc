/** Models as /v1/models names them: samplers with their step and guidance limits, sizes, images per request, add-ons. */
import { loadModels } from "../catalog.js";
import { card, h, table } from "../dom.js";

export async function render(view) {
  const models = await loadModels();
  if (!models.length) view.append(h("p", { class: "notice" }, "No model is registered yet."));
  for (const m of models) {
    const s = m.spec;
    view.append(
      card(
        `${m.display_name}`,
        h(
          "dl",
          { class: "facts", dataset: { model: m.id } },
          h("dt", {}, "Model id (use in requests)"),
          h("dd", {}, h("code", {}, m.id)),
          h("dt", {}, "Family"),
          h("dd", {}, m.family),
          h("dt", {}, "Default size"),
          h("dd", {}, `${s.default_width} × ${s.default_height}`),
          h("dt", {}, "Sizes"),
          h("dd", {}, `${s.min_size} to ${s.max_size} px, multiples of ${s.multiple_of}`),
          h("dt", {}, "Images per request"),
          h("dd", {}, `up to ${s.max_images}`),
          h("dt", {}, "LoRA"),
          h(
            "dd",
            {},
            s.supports_lora
              ? `yes${s.lora_max_rank ? `, rank ≤ ${s.lora_max_rank}` : ""}${s.lora_targets ? `, ${s.lora_targets.length} target layers` : ""}`
              : "no",
          ),
          h("dt", {}, "ControlNet"),
          h("dd", {}, s.supports_controlnet ? "yes" : "no"),
          h("dt", {}, "Block cache (DeepCache)"),
          h("dd", {}, s.supports_deepcache ? "yes" : "no"),
        ),
        table(
          ["Sampler", "Steps", "Default steps", "Guidance"],
          Object.entries(s.samplers).map(([name, l]) =>
            h(
              "tr",
              {},
              h("td", {}, h("code", {}, name), name === s.default_sampler ? " (default)" : ""),
              h("td", {}, `${l.min_steps}–${l.max_steps}`),
              h("td", {}, String(l.default_steps)),
              h("td", {}, `default ${l.default_guidance}, max ${l.max_guidance}`),
            ),
          ),
          `Samplers of ${m.id}`,
        ),
      ),
    );
  }
}
