import { defineConfig } from "drizzle-kit";

// Migrations are generated from src/schema.ts and committed; wrangler and the tests apply them.
export default defineConfig({
  dialect: "sqlite",
  schema: "./src/schema.ts",
  out: "./migrations",
});
