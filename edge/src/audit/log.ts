/** The audit log of administrative actions: who did what to which resource, under which request. */
import { auditTable } from "@imagegen/db";
import type { AppEnv } from "../context.ts";
import { newId } from "../lib/ids.ts";

export function audit(
  c: { var: Pick<AppEnv["Variables"], "db" | "requestId"> },
  e: { tenantId?: string; actor: string; action: string; target?: string; details?: Record<string, unknown> },
) {
  return auditTable.auditInsert(c.var.db, {
    id: newId("aud"),
    tenantId: e.tenantId ?? null,
    actor: e.actor,
    action: e.action,
    target: e.target ?? null,
    details: { ...e.details, request_id: c.var.requestId },
    createdAt: Date.now(),
  });
}
