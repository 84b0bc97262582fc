import { desc, eq } from "drizzle-orm";
import type { Db } from "../index.ts";
import { auditLog } from "../schema.ts";

export type AuditEntry = typeof auditLog.$inferSelect;
export type NewAuditEntry = typeof auditLog.$inferInsert;

export function auditInsert(db: Db, entry: NewAuditEntry) {
  return db.insert(auditLog).values(entry);
}

export async function listAudit(db: Db, tenantId?: string, limit = 100): Promise<AuditEntry[]> {
  const q = db.select().from(auditLog);
  return (tenantId ? q.where(eq(auditLog.tenantId, tenantId)) : q).orderBy(desc(auditLog.id)).limit(limit);
}
