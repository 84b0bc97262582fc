import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

/**
 * Every fetch the Worker makes to http://hooks.test/<name> lands here, as at a webhook receiver: a POST is recorded
 * and answered 204 (500 for the first `?fail=N` of that name); a GET returns what <name> received so far.
 * Other hosts are fetched for real.
 */
const received = new Map<string, Array<{ headers: Record<string, string>; body: string; at: number }>>();
async function webhookReceiver(request: Request): Promise<Response> {
  const url = new URL(request.url);
  if (url.hostname !== "hooks.test") return fetch(request);
  const log = received.get(url.pathname) ?? [];
  received.set(url.pathname, log);
  if (request.method === "GET") return Response.json(log);
  log.push({ headers: Object.fromEntries(request.headers), body: await request.text(), at: Date.now() });
  return new Response(null, { status: log.length <= Number(url.searchParams.get("fail") ?? 0) ? 500 : 204 });
}

// The edge's tests run inside workerd with the Worker of ../wrangler.toml (D1, Durable Objects) and the
// committed drizzle migrations applied before each test file (storage is isolated per file).
export default defineConfig(async () => {
  const migrations = await readD1Migrations(fileURLToPath(new URL("../db/migrations", import.meta.url)));
  return {
    plugins: [
      cloudflareTest({
        wrangler: { configPath: "../wrangler.toml" },
        miniflare: {
          bindings: {
            ADMIN_TOKEN: "test-admin-token",
            TEST_MIGRATIONS: migrations,
            LEASE_TTL_MS: "30000",
            // Presigning is local computation; the tests read and write the bucket through the R2 binding.
            S3_ENDPOINT: "http://127.0.0.1:8787/cdn-cgi/local/r2/s3",
            S3_ACCESS_KEY_ID: "local-dev-access-key",
            S3_SECRET_ACCESS_KEY: "local-dev-secret-key-not-for-production",
            WEBHOOK_SECRET_KEY: "dGVzdC13ZWJob29rLXNlY3JldC1rZXktMzItYnl0ZXM=",
            // Retries in milliseconds, so that the tests see the delivery timers fire.
            WEBHOOK_RETRY_BACKOFF_MS: "50,100,150",
          },
          outboundService: webhookReceiver,
        },
      }),
    ],
    test: {
      include: ["test/**/*.test.ts"],
      setupFiles: ["./test/apply-migrations.ts"],
      testTimeout: 30_000,
    },
  };
});
