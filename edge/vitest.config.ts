import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

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
          },
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
