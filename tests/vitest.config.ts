import { defineConfig } from "vitest/config";

// Cross-part tests against the real stack (wrangler dev + local R2 + runners) on 127.0.0.1.
export default defineConfig({
  test: {
    environment: "node",
    include: ["e2e/**/*.test.ts"],
    testTimeout: 120_000,
    hookTimeout: 240_000,
    fileParallelism: false,
  },
});
