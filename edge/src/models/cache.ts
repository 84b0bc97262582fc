/**
 * Models as the generation path reads them: every generation needs its model's spec (limits, samplers), which the
 * operator changes rarely, so it is read from D1 at most once per `MODEL_CACHE_MS` per isolate. The operator's
 * `PUT /admin/v1/models/{id}` clears this isolate's entries at once; other isolates see the change within
 * `MODEL_CACHE_MS`.
 */
import { modelsTable, type Db } from "@imagegen/db";
import { IsolateCache } from "../lib/isolate-cache.ts";

export const MODEL_CACHE_MS = 5_000;
const models = new IsolateCache<modelsTable.Model>(MODEL_CACHE_MS);

export const cachedModel = (env: { DB: D1Database }, db: Db, id: string) =>
  models.get(env.DB, id, () => modelsTable.getModel(db, id));

export const forgetModels = (env: { DB: D1Database }) => models.clear(env.DB);
