import { and, desc, eq } from "drizzle-orm";
import type { Db } from "../index.ts";
import { invites, tenants } from "../schema.ts";

export type Invite = typeof invites.$inferSelect;
export type NewInvite = typeof invites.$inferInsert;

export async function insertInvite(db: Db, invite: NewInvite): Promise<Invite> {
  const [row] = await db.insert(invites).values(invite).returning();
  return row!;
}

/** The invite with this token hash and its tenant, whatever its state: the caller checks use and expiry. */
export async function findInviteByHash(db: Db, tokenHash: string) {
  const [row] = await db
    .select({ invite: invites, tenant: tenants })
    .from(invites)
    .innerJoin(tenants, eq(tenants.id, invites.tenantId))
    .where(eq(invites.tokenHash, tokenHash))
    .limit(1);
  return row;
}

export async function listInvites(db: Db, tenantId: string): Promise<Invite[]> {
  return db.select().from(invites).where(eq(invites.tenantId, tenantId)).orderBy(desc(invites.createdAt));
}

export async function deleteInvite(db: Db, tenantId: string, id: string): Promise<boolean> {
  const rows = await db
    .delete(invites)
    .where(and(eq(invites.id, id), eq(invites.tenantId, tenantId)))
    .returning({ id: invites.id });
  return rows.length > 0;
}
