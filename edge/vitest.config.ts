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
          bindings: { ADMIN_TOKEN: "test-admin-token", TEST_MIGRATIONS: migrations, LEASE_TTL_MS: "30000" },
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
