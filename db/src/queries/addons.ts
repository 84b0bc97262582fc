import { parseAddonRef } from "@imagegen/contracts/refs";
import { and, desc, eq, inArray, isNull, or, sql } from "drizzle-orm";
import { transaction } from "../batch.ts";
import type { Db } from "../index.ts";
import { addons, addonVersions } from "../schema.ts";

export type Addon = typeof addons.$inferSelect;
export type AddonVersion = typeof addonVersions.$inferSelect;
export type NewAddon = typeof addons.$inferInsert;
export type NewAddonVersion = typeof addonVersions.$inferInsert;

/** An add-on a tenant may see: its own (private or tenant-wide) or anyone's public one, never a deleted one. */
const visibleTo = (tenantId: string) =>
  and(isNull(addons.deletedAt), or(eq(addons.tenantId, tenantId), eq(addons.visibility, "public")));

/** Inserts an add-on with its first version (or with none: uploads add theirs with `addVersion`). */
export async function insertAddonWithVersion(db: Db, addon: NewAddon, versions: NewAddonVersion[]) {
  const [a, ...v] = await db.batch([
    db.insert(addons).values(addon).returning(),
    ...versions.map((x) => db.insert(addonVersions).values(x).returning()),
  ]);
  return { addon: a[0]!, versions: v.map((r) => r[0]!) };
}

export async function getVisibleAddon(db: Db, tenantId: string, id: string): Promise<Addon | undefined> {
  return db.query.addons.findFirst({ where: and(eq(addons.id, id), visibleTo(tenantId)) });
}

export async function listVisibleAddons(db: Db, tenantId: string, limit = 100): Promise<Addon[]> {
  return db.select().from(addons).where(visibleTo(tenantId)).orderBy(desc(addons.id)).limit(limit);
}

export interface ResolvedAddon {
  addon: Addon;
  version: AddonVersion;
}

/**
 * Resolves `id` or `id@version` references to the versions a job will use: the latest ready version when none
 * is named. A reference the tenant may not see resolves to nothing, exactly like one that does not exist.
 */
export async function resolveVisibleVersion(
  db: Db,
  tenantId: string,
  id: string,
  version: number | undefined,
): Promise<ResolvedAddon | undefined> {
  const [row] = await db
    .select({ addon: addons, version: addonVersions })
    .from(addons)
    .innerJoin(addonVersions, eq(addonVersions.addonId, addons.id))
    .where(
      and(
        eq(addons.id, id),
        visibleTo(tenantId),
        version === undefined
          ? eq(
              addonVersions.version,
              sql`(SELECT max(v.version) FROM addon_versions v WHERE v.addon_id = ${addons.id} AND v.status = 'ready')`,
            )
          : eq(addonVersions.version, version),
      ),
    )
    .limit(1);
  return row;
}

/** The stored versions behind a job's "id@version" refs (whoever owns them: the job was authorised at create). */
export async function versionsForRefs(db: Db, refs: string[]): Promise<ResolvedAddon[]> {
  if (refs.length === 0) return [];
  const rows = await db
    .select({ addon: addons, version: addonVersions })
    .from(addons)
    .innerJoin(addonVersions, eq(addonVersions.addonId, addons.id))
    .where(
      and(
        isNull(addons.deletedAt),
        or(
          ...refs.map((r) => {
            const { id, version } = parseAddonRef(r);
            return and(eq(addons.id, id), eq(addonVersions.version, version ?? 0));
          }),
        ),
      ),
    );
  return rows;
}

/** Soft-deletes an add-on its tenant owns; queued jobs that use it fail at lease with a clear error. */
export async function deleteOwnedAddon(db: Db, tenantId: string, id: string, now: number): Promise<Addon | undefined> {
  const [row] = await db
    .update(addons)
    .set({ deletedAt: now, updatedAt: now })
    .where(and(eq(addons.id, id), eq(addons.tenantId, tenantId), isNull(addons.deletedAt)))
    .returning();
  return row;
}

export async function getOwnedAddon(db: Db, tenantId: string, id: string): Promise<Addon | undefined> {
  return db.query.addons.findFirst({
    where: and(eq(addons.id, id), eq(addons.tenantId, tenantId), isNull(addons.deletedAt)),
  });
}

export async function findOwnedByName(db: Db, tenantId: string, name: string): Promise<Addon | undefined> {
  return db.query.addons.findFirst({
    where: and(eq(addons.tenantId, tenantId), eq(addons.name, name), isNull(addons.deletedAt)),
  });
}

/** Adds the next version of an add-on, atomically (one D1 batch): two uploads cannot take the same number. */
export async function addVersion(
  db: Db,
  addonId: string,
  v: { storageKey: (version: number) => string; sizeBytes: number; sha256: string },
  now: number,
) {
  // The storage key embeds the version number, which only the database knows: compute it in SQL from a template.
  const template = v.storageKey(0).replace(/v0$/, "v");
  const insert = sql`INSERT INTO addon_versions (addon_id, version, status, size_bytes, sha256, storage_key, created_at, updated_at)
    SELECT id, latest_version + 1, 'pending', ${v.sizeBytes}, ${v.sha256}, ${template} || (latest_version + 1), ${now}, ${now}
    FROM addons WHERE id = ${addonId}`;
  const bump = sql`UPDATE addons SET latest_version = latest_version + 1, updated_at = ${now} WHERE id = ${addonId}`;
  await transaction(db, [insert, bump]);
  const addon = (await db.query.addons.findFirst({ where: eq(addons.id, addonId) }))!;
  const version = (await getVersion(db, addonId, addon.latestVersion))!;
  return { addon, version };
}

export async function getVersion(db: Db, addonId: string, version: number): Promise<AddonVersion | undefined> {
  return db.query.addonVersions.findFirst({
    where: and(eq(addonVersions.addonId, addonId), eq(addonVersions.version, version)),
  });
}

export async function listVersions(db: Db, addonId: string): Promise<AddonVersion[]> {
  return db.select().from(addonVersions).where(eq(addonVersions.addonId, addonId)).orderBy(desc(addonVersions.version));
}

/** Moves a version between states, only from the state the caller saw (so two finalizes cannot both run). */
export async function transitionVersion(
  db: Db,
  addonId: string,
  version: number,
  from: AddonVersion["status"][],
  patch: Partial<Pick<AddonVersion, "status" | "rejectionReason" | "details">>,
  now: number,
): Promise<AddonVersion | undefined> {
  const [row] = await db
    .update(addonVersions)
    .set({ ...patch, updatedAt: now })
    .where(
      and(eq(addonVersions.addonId, addonId), eq(addonVersions.version, version), inArray(addonVersions.status, from)),
    )
    .returning();
  return row;
}

export async function setVisibility(
  db: Db,
  tenantId: string,
  id: string,
  visibility: Addon["visibility"],
  now: number,
) {
  const [row] = await db
    .update(addons)
    .set({ visibility, updatedAt: now })
    .where(and(eq(addons.id, id), eq(addons.tenantId, tenantId), isNull(addons.deletedAt)))
    .returning();
  return row;
}

/**
 * Storage keys of add-on files no one may use any more: every version of an add-on deleted in [from, to), and
 * versions rejected in [from, to). A key another live version still names is kept.
 */
export async function deadAddonFiles(db: Db, from: number, to: number, limit = 200): Promise<string[]> {
  const rows = await db.all<{
    key: string;
  }>(sql`SELECT DISTINCT v.storage_key AS key FROM addon_versions v JOIN addons a ON a.id = v.addon_id
    WHERE ((a.deleted_at >= ${from} AND a.deleted_at < ${to}) OR (v.status = 'rejected' AND v.updated_at >= ${from} AND v.updated_at < ${to}))
      AND NOT EXISTS (SELECT 1 FROM addon_versions o JOIN addons oa ON oa.id = o.addon_id
        WHERE o.storage_key = v.storage_key AND oa.deleted_at IS NULL AND o.status != 'rejected')
    LIMIT ${limit}`);
  return rows.map((r) => r.key);
}
