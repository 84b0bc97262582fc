import { eq } from "drizzle-orm";
import type { Db } from "../index.ts";
import { models } from "../schema.ts";

export type Model = typeof models.$inferSelect;
export type NewModel = typeof models.$inferInsert;

export async function upsertModel(db: Db, model: NewModel): Promise<Model> {
  const [row] = await db
    .insert(models)
    .values(model)
    .onConflictDoUpdate({
      target: models.id,
      set: {
        family: model.family,
        displayName: model.displayName,
        spec: model.spec,
        status: model.status ?? "active",
        updatedAt: model.updatedAt,
      },
    })
    .returning();
  return row!;
}

export async function getModel(db: Db, id: string): Promise<Model | undefined> {
  return db.query.models.findFirst({ where: eq(models.id, id) });
}

export async function listModels(db: Db): Promise<Model[]> {
  return db.select().from(models).where(eq(models.status, "active")).orderBy(models.id);
}
