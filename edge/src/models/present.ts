import type { z } from "@hono/zod-openapi";
import { iso, Model, ModelSpec } from "@imagegen/contracts";
import type { modelsTable } from "@imagegen/db";

export function presentModel(m: modelsTable.Model): z.infer<typeof Model> {
  return {
    id: m.id,
    object: "model",
    family: m.family,
    display_name: m.displayName,
    spec: ModelSpec.parse(m.spec),
    created_at: iso(m.createdAt)!,
  };
}
