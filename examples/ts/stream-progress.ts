/** Queues a generation and follows its progress as server-sent events until it ends. */
import { client, model } from "./client.ts";

const { id } = await model();
const queued = await client.generations.create({ model: id, prompt: "a yellow circle at the bottom right", seed: 3 });
const seen: string[] = [];
for await (const event of client.generations.stream(queued.id)) {
  const { status, progress } = event.data;
  seen.push(status);
  process.stderr.write(`${status} ${progress ? `${progress.step}/${progress.total}` : ""}\n`);
}
console.log(JSON.stringify({ id: queued.id, statuses: seen, final: seen.at(-1) }));
if (seen.at(-1) !== "succeeded") process.exit(1);
