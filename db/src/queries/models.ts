import { and, eq } from "drizzle-orm";
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

/** The active models of a family: add-ons are validated against them. */
export async function modelsOfFamily(db: Db, family: string): Promise<Model[]> {
  return db
    .select()
    .from(models)
    .where(and(eq(models.family, family), eq(models.status, "active")))
    .orderBy(models.id);
}
