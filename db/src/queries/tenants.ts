import { eq } from "drizzle-orm";
import type { Db } from "../index.ts";
import { tenants } from "../schema.ts";

export type Tenant = typeof tenants.$inferSelect;
export type NewTenant = typeof tenants.$inferInsert;

export async function insertTenant(db: Db, tenant: NewTenant): Promise<Tenant> {
  const [row] = await db.insert(tenants).values(tenant).returning();
  return row!;
}

export async function getTenant(db: Db, id: string): Promise<Tenant | undefined> {
  return db.query.tenants.findFirst({ where: eq(tenants.id, id) });
}

export async function updateTenant(db: Db, id: string, patch: Partial<NewTenant>): Promise<Tenant | undefined> {
  const [row] = await db.update(tenants).set(patch).where(eq(tenants.id, id)).returning();
  return row;
}

export async function listTenants(db: Db): Promise<Tenant[]> {
  return db.select().from(tenants).orderBy(tenants.id);
}
