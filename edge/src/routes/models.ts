import { createRoute, z } from "@hono/zod-openapi";
import { modelsTable } from "@imagegen/db";
import { router } from "../context.ts";
import { presentModel } from "../models/present.ts";
import { ApiError } from "../errors.ts";
import { errorResponses, IdParam, iso, Model, ModelList, ModelSpec } from "@imagegen/contracts";

export const models = router()
  .openapi(
    createRoute({
      method: "get",
      path: "/models",
      operationId: "listModels",
      tags: ["models"],
      summary: "List models",
      responses: {
        200: { description: "Models", content: { "application/json": { schema: ModelList } } },
        ...errorResponses(401, 429),
      },
    }),
    async (c) =>
      c.json({ object: "list" as const, data: (await modelsTable.listModels(c.var.db)).map(presentModel) }, 200),
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/models/{id}",
      operationId: "getModel",
      tags: ["models"],
      summary: "Get a model",
      request: { params: IdParam("model id", "tiny-shapes") },
      responses: {
        200: { description: "The model", content: { "application/json": { schema: Model } } },
        ...errorResponses(401, 404, 429),
      },
    }),
    async (c) => {
      const { id } = c.req.valid("param");
      const m = await modelsTable.getModel(c.var.db, id);
      if (!m || m.status !== "active") throw ApiError.notFound("model", id, "id");
      return c.json(presentModel(m), 200);
    },
  );
