import { and, asc, eq, sql } from "drizzle-orm";
import { transaction } from "../batch.ts";
import type { Db } from "../index.ts";
import { tenants, users } from "../schema.ts";

export type User = typeof users.$inferSelect;
export type NewUser = typeof users.$inferInsert;
export type Role = User["role"];

/** The user with this (lower-cased) email and their tenant: emails are unique across tenants. */
export async function findUserByEmail(db: Db, email: string) {
  const [row] = await db
    .select({ user: users, tenant: tenants })
    .from(users)
    .innerJoin(tenants, eq(tenants.id, users.tenantId))
    .where(eq(users.email, email))
    .limit(1);
  return row;
}

export async function emailTaken(db: Db, email: string): Promise<boolean> {
  return (await db.$count(users, eq(users.email, email))) > 0;
}

export async function getUser(db: Db, tenantId: string, id: string): Promise<User | undefined> {
  return db.query.users.findFirst({ where: and(eq(users.id, id), eq(users.tenantId, tenantId)) });
}

export async function listUsers(db: Db, tenantId: string): Promise<User[]> {
  return db.select().from(users).where(eq(users.tenantId, tenantId)).orderBy(asc(users.createdAt));
}

/**
 * Creates the user an invite names and spends the invite, in one transaction: the user row is inserted only while
 * the invite is unused and unexpired, so one invite makes at most one account. Undefined when the invite was spent.
 */
export async function createUserFromInvite(db: Db, user: NewUser, inviteId: string, now: number) {
  await transaction(db, [
    sql`INSERT INTO users (id, tenant_id, email, name, role, password_hash, created_at)
      SELECT ${user.id}, ${user.tenantId}, ${user.email}, ${user.name ?? ""}, ${user.role ?? "member"}, ${user.passwordHash ?? null}, ${user.createdAt}
      WHERE EXISTS (SELECT 1 FROM invites WHERE id = ${inviteId} AND used_at IS NULL AND expires_at > ${now})`,
    sql`UPDATE invites SET used_at = ${now} WHERE id = ${inviteId} AND used_at IS NULL
      AND EXISTS (SELECT 1 FROM users WHERE id = ${user.id})`,
  ]);
  return db.query.users.findFirst({ where: eq(users.id, user.id) });
}

export async function setPasswordHash(db: Db, id: string, passwordHash: string): Promise<void> {
  await db.update(users).set({ passwordHash }).where(eq(users.id, id));
}

/** A tenant with another owner besides `id` (demoting or deleting `id` must leave one). */
const anotherOwner = (tenantId: string, id: string) =>
  sql`EXISTS (SELECT 1 FROM users o WHERE o.tenant_id = ${tenantId} AND o.role = 'owner' AND o.id <> ${id})`;

export type ChangeOutcome = { ok: true; user: User } | { ok: false; reason: "not_found" | "last_owner" };

/** Changes a role in one statement, so that two owners demoting each other at once cannot leave the tenant ownerless. */
export async function setRole(db: Db, tenantId: string, id: string, role: Role): Promise<ChangeOutcome> {
  const [row] = await db
    .update(users)
    .set({ role })
    .where(
      and(
        eq(users.id, id),
        eq(users.tenantId, tenantId),
        role === "owner" ? undefined : sql`(${users.role} <> 'owner' OR ${anotherOwner(tenantId, id)})`,
      ),
    )
    .returning();
  if (row) return { ok: true, user: row };
  return (await getUser(db, tenantId, id)) ? { ok: false, reason: "last_owner" } : { ok: false, reason: "not_found" };
}

/**
 * Deletes a user, their sessions, and their name on the keys they made (the keys are the tenant's and stay), in one
 * transaction, unless they are the tenant's last owner.
 */
export async function deleteUser(db: Db, tenantId: string, id: string): Promise<ChangeOutcome> {
  const user = await getUser(db, tenantId, id);
  if (!user) return { ok: false, reason: "not_found" };
  const allowed = sql`EXISTS (SELECT 1 FROM users u WHERE u.id = ${id} AND u.tenant_id = ${tenantId} AND (u.role <> 'owner' OR ${anotherOwner(tenantId, id)}))`;
  const results = await transaction(db, [
    sql`DELETE FROM sessions WHERE user_id = ${id} AND ${allowed}`,
    sql`UPDATE api_keys SET user_id = NULL WHERE user_id = ${id} AND ${allowed}`,
    sql`DELETE FROM users WHERE id = ${id} AND tenant_id = ${tenantId} AND (role <> 'owner' OR ${anotherOwner(tenantId, id)})`,
  ]);
  return (results[2]?.meta.changes ?? 0) > 0 ? { ok: true, user } : { ok: false, reason: "last_owner" };
}
