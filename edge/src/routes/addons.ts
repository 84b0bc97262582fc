import { createRoute, z } from "@hono/zod-openapi";
import { addonsTable } from "@imagegen/db";
import { requireScope } from "../auth/middleware.ts";
import { router } from "../context.ts";
import { ApiError } from "../errors.ts";
import {
  Addon,
  ADDON_SIZE_LIMITS,
  AddonUpload,
  AddonVersion,
  CreateAddonBody,
  errorResponses,
  formatAddonRef,
  IdParam,
  iso,
  UpdateAddonBody,
} from "@imagegen/contracts";
import { presentAddon, presentVersion } from "../addons/present.ts";
import { validateControlNet, validateLora } from "../addons/validate.ts";
import { addonKey, addonUploadKey, objectStore, sealUpload } from "../storage/index.ts";
import { newId } from "../lib/ids.ts";
import { audit } from "../audit/log.ts";

const UPLOAD_URL_TTL_SECONDS = 3600;
const AddonId = IdParam("add-on id", "addon_01hzy3k8m2q9w7e4r5t6y7u8i9");
const VersionParams = z.object({
  id: z
    .string()
    .min(1)
    .max(64)
    .openapi({ param: { name: "id", in: "path" } }),
  version: z.coerce
    .number()
    .int()
    .min(1)
    .openapi({ param: { name: "version", in: "path" } }),
});

export const addons = router()
  .openapi(
    createRoute({
      method: "post",
      path: "/addons",
      operationId: "createAddonUpload",
      tags: ["addons"],
      summary: "Start an add-on upload: returns a presigned PUT for exactly the declared size",
      description:
        "PUT the file to `upload.url` with the given headers, then call finalize. Uploading a name this tenant already has adds a version. " +
        "A LoRA is one `.safetensors` file; a ControlNet is a ustar archive of its bundle folder (`manifest.json` and the ONNX it names).",
      request: { body: { content: { "application/json": { schema: CreateAddonBody } }, required: true } },
      responses: {
        201: { description: "Upload started", content: { "application/json": { schema: AddonUpload } } },
        ...errorResponses(400, 401, 403, 409, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:write");
      const body = c.req.valid("json");
      const tenantId = c.var.auth.tenant.id;
      const db = c.var.db;
      if (body.size_bytes > ADDON_SIZE_LIMITS[body.kind]) {
        throw ApiError.invalid(
          "addon_too_large",
          `A ${body.kind} may be at most ${ADDON_SIZE_LIMITS[body.kind]} bytes; declared ${body.size_bytes}.`,
          "size_bytes",
        );
      }
      const now = Date.now();
      let existing = await addonsTable.findOwnedByName(db, tenantId, body.name);
      if (existing && (existing.kind !== body.kind || existing.family !== body.family)) {
        throw ApiError.conflict(
          "addon_name_taken",
          `Add-on '${body.name}' is a ${existing.kind} for '${existing.family}'; a new version must match.`,
        );
      }
      if (!existing) {
        try {
          existing = (
            await addonsTable.insertAddonWithVersion(
              db,
              {
                id: newId("addon", now),
                tenantId,
                kind: body.kind,
                name: body.name,
                family: body.family,
                visibility: body.visibility,
                latestVersion: 0,
                createdAt: now,
                updatedAt: now,
              },
              [],
            )
          ).addon;
        } catch (err) {
          // The name index also covers deleted add-ons (and a concurrent create of the same name): a 409, not a 500.
          if (!/UNIQUE constraint failed: addons\.tenant_id, addons\.name/.test(`${err} ${(err as Error)?.cause}`))
            throw err;
          throw ApiError.conflict(
            "addon_name_taken",
            `The name '${body.name}' is taken by an add-on of this tenant, possibly a deleted one; choose another name.`,
          );
        }
      }
      const { addon, version } = await addonsTable.addVersion(
        db,
        existing.id,
        { storageKey: (v) => addonKey(tenantId, existing!.id, v), sizeBytes: body.size_bytes, sha256: body.sha256 },
        now,
      );
      const contentType = "application/octet-stream";
      const { url } = await objectStore(c.env).presignPut(addonUploadKey(version.storageKey), UPLOAD_URL_TTL_SECONDS, {
        contentType,
        contentLength: body.size_bytes,
      });
      await audit(c, {
        tenantId,
        actor: c.var.auth.actor,
        action: "addon.upload",
        target: formatAddonRef(addon.id, version.version),
        details: { name: body.name, size_bytes: body.size_bytes },
      });
      return c.json(
        {
          addon: presentAddon(addon, tenantId),
          version: presentVersion(version),
          upload: {
            method: "PUT" as const,
            url,
            headers: { "content-type": contentType },
            expires_at: iso(now + UPLOAD_URL_TTL_SECONDS * 1000)!,
          },
        },
        201,
      );
    },
  )
  .openapi(
    createRoute({
      method: "post",
      path: "/addons/{id}/versions/{version}/finalize",
      operationId: "finalizeAddonVersion",
      tags: ["addons"],
      summary: "Finish an upload: size and sha256 are checked, then the file is validated against the family's models",
      request: { params: VersionParams },
      responses: {
        200: {
          description: "ready, or rejected with the reason",
          content: { "application/json": { schema: AddonVersion } },
        },
        ...errorResponses(401, 404, 409, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:write");
      const { id, version } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const db = c.var.db;
      const addon = await addonsTable.getOwnedAddon(db, tenantId, id);
      const row = addon && (await addonsTable.getVersion(db, id, version));
      if (!addon || !row) throw ApiError.notFound("add-on version", formatAddonRef(id, version), "id");
      if (row.status === "ready" || row.status === "rejected") return c.json(presentVersion(row), 200);
      const now = Date.now();
      if (!(await addonsTable.transitionVersion(db, id, version, ["pending"], { status: "validating" }, now))) {
        throw ApiError.conflict(
          "finalize_in_progress",
          `Add-on ${formatAddonRef(id, version)} is already being validated.`,
        );
      }
      const store = objectStore(c.env);
      const reject = async (reason: string) =>
        c.json(
          presentVersion(
            (await addonsTable.transitionVersion(
              db,
              id,
              version,
              ["validating"],
              { status: "rejected", rejectionReason: reason },
              Date.now(),
            ))!,
          ),
          200,
        );
      const stored = await sealUpload(store, row.storageKey);
      if (!stored) {
        // Nothing uploaded yet: back to pending so the tenant can upload and finalize again.
        await addonsTable.transitionVersion(db, id, version, ["validating"], { status: "pending" }, Date.now());
        throw ApiError.conflict(
          "upload_missing",
          `Nothing has been uploaded for ${formatAddonRef(id, version)} yet; PUT the file to the upload URL first.`,
        );
      }
      if (stored.size !== row.sizeBytes)
        return reject(
          `The upload has ${stored.size} bytes but ${row.sizeBytes} were declared (truncated or wrong file).`,
        );
      const digest = await store.sha256(row.storageKey);
      if (digest !== row.sha256) return reject(`The upload's sha256 is ${digest}, not the declared ${row.sha256}.`);
      const validate = addon.kind === "controlnet" ? validateControlNet : validateLora;
      const verdict = await validate(db, store, row.storageKey, stored.size, addon.family);
      if (!verdict.ok) return reject(verdict.reason);
      const ready = await addonsTable.transitionVersion(
        db,
        id,
        version,
        ["validating"],
        { status: "ready", details: verdict.details },
        Date.now(),
      );
      return c.json(presentVersion(ready!), 200);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/addons/{id}/versions",
      operationId: "listAddonVersions",
      tags: ["addons"],
      summary: "An add-on's versions and their validation",
      request: { params: AddonId },
      responses: {
        200: {
          description: "Versions",
          content: {
            "application/json": { schema: z.object({ object: z.literal("list"), data: z.array(AddonVersion) }) },
          },
        },
        ...errorResponses(401, 404, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:read");
      const { id } = c.req.valid("param");
      const a = await addonsTable.getVisibleAddon(c.var.db, c.var.auth.tenant.id, id);
      if (!a) throw ApiError.notFound("add-on", id, "id");
      // Other tenants see what they can use: a public add-on's pending or rejected versions (and why) are its owner's.
      const owned = a.tenantId === c.var.auth.tenant.id;
      const versions = (await addonsTable.listVersions(c.var.db, id)).filter((v) => owned || v.status === "ready");
      return c.json({ object: "list" as const, data: versions.map(presentVersion) }, 200);
    },
  )
  .openapi(
    createRoute({
      method: "patch",
      path: "/addons/{id}",
      operationId: "updateAddon",
      tags: ["addons"],
      summary: "Change an add-on's visibility",
      request: {
        params: AddonId,
        body: { content: { "application/json": { schema: UpdateAddonBody } }, required: true },
      },
      responses: {
        200: { description: "Updated", content: { "application/json": { schema: Addon } } },
        ...errorResponses(400, 401, 404, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:write");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const a = await addonsTable.setVisibility(c.var.db, tenantId, id, c.req.valid("json").visibility, Date.now());
      if (!a) throw ApiError.notFound("add-on", id, "id");
      await audit(c, {
        tenantId,
        actor: c.var.auth.actor,
        action: "addon.visibility",
        target: id,
        details: { visibility: a.visibility },
      });
      return c.json(presentAddon(a, tenantId), 200);
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/addons",
      operationId: "listAddons",
      tags: ["addons"],
      summary: "List the add-ons this tenant can use (its own and public ones)",
      responses: {
        200: {
          description: "Add-ons",
          content: { "application/json": { schema: z.object({ object: z.literal("list"), data: z.array(Addon) }) } },
        },
        ...errorResponses(401, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:read");
      const tenantId = c.var.auth.tenant.id;
      return c.json(
        {
          object: "list" as const,
          data: (await addonsTable.listVisibleAddons(c.var.db, tenantId)).map((a) => presentAddon(a, tenantId)),
        },
        200,
      );
    },
  )
  .openapi(
    createRoute({
      method: "get",
      path: "/addons/{id}",
      operationId: "getAddon",
      tags: ["addons"],
      summary: "Get an add-on",
      request: { params: IdParam("add-on id", "addon_01hzy3k8m2q9w7e4r5t6y7u8i9") },
      responses: {
        200: { description: "The add-on", content: { "application/json": { schema: Addon } } },
        ...errorResponses(401, 404, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:read");
      const { id } = c.req.valid("param");
      const a = await addonsTable.getVisibleAddon(c.var.db, c.var.auth.tenant.id, id);
      if (!a) throw ApiError.notFound("add-on", id, "id");
      return c.json(presentAddon(a, c.var.auth.tenant.id), 200);
    },
  )
  .openapi(
    createRoute({
      method: "delete",
      path: "/addons/{id}",
      operationId: "deleteAddon",
      tags: ["addons"],
      summary: "Delete an add-on this tenant owns",
      request: { params: IdParam("add-on id", "addon_01hzy3k8m2q9w7e4r5t6y7u8i9") },
      responses: {
        200: { description: "Deleted", content: { "application/json": { schema: Addon } } },
        ...errorResponses(401, 403, 404, 429),
      },
    }),
    async (c) => {
      requireScope(c, "addons:write");
      const { id } = c.req.valid("param");
      const tenantId = c.var.auth.tenant.id;
      const deleted = await addonsTable.deleteOwnedAddon(c.var.db, tenantId, id, Date.now());
      // Someone else's add-on, public or not, is not this tenant's to delete: the same 404 as a missing one.
      if (!deleted) throw ApiError.notFound("add-on", id, "id");
      return c.json(presentAddon(deleted, tenantId), 200);
    },
  );
