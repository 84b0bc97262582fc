/**
 * The wire, declared once: every request and response shape of the public, OpenAI-compatible, runner and operator
 * APIs, the error body, the enums the database shares, and the add-on reference `id@version`.
 */
export * from "./enums.ts";
export * from "./refs.ts";
export * from "./errors.ts";
export * from "./common.ts";
export * from "./models.ts";
export * from "./generations.ts";
export * from "./addons.ts";
export * from "./keys.ts";
export * from "./admin.ts";
export * from "./webhooks.ts";
export * from "./users.ts";
export * from "./auth.ts";
export * from "./usage.ts";
export * from "./runner.ts";
export * from "./openai.ts";
export * from "./openapi.ts";
