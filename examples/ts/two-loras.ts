/** Stacks two LoRAs (two of the add-ons this tenant can use, for the model's family) on one generation. */
import { client, model } from "./client.ts";

const m = await model();
const loras: string[] = [];
for await (const addon of client.addons.list())
  if (addon.kind === "lora" && addon.family === m.family) loras.push(addon.id);
if (loras.length < 2) throw new Error(`two LoRAs of family ${m.family} are needed, there are ${loras.length}`);
const g = await client.generations.createAndWait({
  model: m.id,
  prompt: "a small blue square at the top",
  seed: 11,
  loras: loras.slice(0, 2).map((id, i) => ({ id, scale: i === 0 ? 0.8 : 0.6 })),
});
console.log(
  JSON.stringify({
    id: g.id,
    status: g.status,
    loras: g.request.loras.map((l) => `${l.name}@${l.version}×${l.scale}`),
    url: g.images[0]?.url,
  }),
);
