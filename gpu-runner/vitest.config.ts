import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    environment: "node",
    include: ["src/**/*.test.ts", "test/**/*.test.ts"],
    // Sessions are created for real and the machine is shared: give slow runs room without hiding hangs.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // One file at a time: the suite's timing assertions (main-thread gaps) must not compete with each other.
    fileParallelism: false,
  },
});
