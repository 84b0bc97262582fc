/** Generates one image and prints its URL. `node examples/ts/generate.ts` against `npm start`. */
import { client, model } from "./client.ts";

const { id } = await model();
const g = await client.generations.createAndWait({
  model: id,
  prompt: "a large red circle on the left, blue background",
  seed: 7,
});
console.log(JSON.stringify({ id: g.id, status: g.status, url: g.images[0]?.url, request_id: g._request_id }));
