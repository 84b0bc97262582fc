/**
 * Receives the webhook of a generation on a local server and verifies it (Standard Webhooks: webhook-id,
 * webhook-timestamp, webhook-signature) with the tenant's secret before trusting it.
 */
import { createServer } from "node:http";
import { WebhookVerificationError } from "@imagegen/sdk";
import { client, model } from "./client.ts";

const { secret } = await client.webhooks.secret();
const delivered = new Promise<unknown>((resolveEvent, reject) => {
  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      try {
        // The raw body, as received: a re-serialized JSON would not match the signature.
        const event = await client.webhooks.verify(Buffer.concat(chunks), req.headers, secret);
        res.writeHead(204).end();
        resolveEvent(event);
      } catch (err) {
        res.writeHead(err instanceof WebhookVerificationError ? 400 : 500).end();
        reject(err);
      } finally {
        server.close();
      }
    });
  });
  server.listen(0, "127.0.0.1", async () => {
    const { port } = server.address() as { port: number };
    const { id } = await model();
    const g = await client.generations.create({
      model: id,
      prompt: "a red square",
      webhook_url: `http://127.0.0.1:${port}/hook`,
    });
    process.stderr.write(`queued ${g.id}, waiting for its webhook on port ${port}\n`);
  });
  setTimeout(() => reject(new Error("no webhook within 120 s")), 120_000).unref();
});
const event = (await delivered) as { type: string; data: { id: string; status: string } };
console.log(JSON.stringify({ verified: true, type: event.type, generation: event.data.id, status: event.data.status }));
