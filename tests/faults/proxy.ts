/**
 * A fault-injecting HTTP proxy on 127.0.0.1 in front of the store the runners write to (their STORAGE_PROXY): it
 * forwards each request to the upstream origin as the signed host, or fails it the way stores fail.
 */
import { createServer, request, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";

export const FAULT_MODES = ["pass", "503", "drop", "hang", "lie", "corrupt"] as const;
/**
 * pass: forward. 503: answer 503 (an overloaded store). drop: close the connection unanswered. hang: take the request
 * and never answer. lie: answer 200 without storing anything. corrupt: forward with bytes flipped (same length).
 */
export type FaultMode = (typeof FAULT_MODES)[number];

export interface FaultProxy {
  url: string;
  mode: FaultMode;
  /** Requests seen per mode they met. */
  counts: Record<FaultMode, number>;
  close(): Promise<void>;
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of req) chunks.push(c as Buffer);
  return Buffer.concat(chunks);
}

export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  const sockets = new Set<Socket>();
  const proxy: FaultProxy = {
    url: "",
    mode: "pass",
    counts: Object.fromEntries(FAULT_MODES.map((m) => [m, 0])) as Record<FaultMode, number>,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const forward = (req: IncomingMessage, res: ServerResponse, body: Buffer) => {
    const up = request(
      {
        host: target.hostname,
        port: target.port,
        method: req.method,
        path: req.url,
        headers: { ...req.headers, host: target.host, "content-length": String(body.length) },
      },
      (answer) => {
        res.writeHead(answer.statusCode ?? 502, answer.headers);
        answer.pipe(res);
      },
    );
    up.on("error", () => res.destroy());
    up.end(body);
  };
  const server: Server = createServer(async (req, res) => {
    const mode = proxy.mode;
    proxy.counts[mode]++;
    if (mode === "drop") return req.socket.destroy();
    const body = await readBody(req);
    switch (mode) {
      case "hang":
        return;
      case "503":
        return res
          .writeHead(503, { "content-type": "application/xml", "retry-after": "1" })
          .end("<Error><Code>ServiceUnavailable</Code></Error>");
      case "lie":
        return res.writeHead(200).end();
      case "corrupt": {
        const bad = Buffer.from(body);
        for (let i = 0; i < bad.length; i += 97) bad[i]! ^= 0xff;
        return forward(req, res, bad);
      }
      default:
        return forward(req, res, body);
    }
  });
  server.on("connection", (s) => {
    sockets.add(s);
    s.on("close", () => sockets.delete(s));
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  proxy.url = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  return proxy;
}
