import { env } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { call, generate, newTenant, registerAddon, registerModel } from "./helpers.ts";

let a: Awaited<ReturnType<typeof newTenant>>;
let b: Awaited<ReturnType<typeof newTenant>>;

beforeAll(async () => {
  await registerModel();
  await registerModel("other-model", "other-family");
  a = await newTenant("tenant-a");
  b = await newTenant("tenant-b");
});

describe("tenant isolation", () => {
  it("B cannot read, list or cancel A's generation, and sees the same 404 as for a missing one", async () => {
    const job = await generate(a.key);
    expect(job.status).toBe(202);
    const get = await call("GET", `/v1/generations/${job.body.id}`, { token: b.key });
    const missing = await call("GET", `/v1/generations/gen_00000000000000000000000000`, { token: b.key });
    expect(get.status).toBe(404);
    expect(missing.status).toBe(404);
    expect(get.body.error.code).toBe(missing.body.error.code);
    const cancel = await call("POST", `/v1/generations/${job.body.id}/cancel`, { token: b.key });
    expect(cancel.status).toBe(404);
    const listB = await call("GET", "/v1/generations?limit=100", { token: b.key });
    expect(listB.body.data.map((g: any) => g.id)).not.toContain(job.body.id);
    const listA = await call("GET", "/v1/generations?limit=100", { token: a.key });
    expect(listA.body.data.map((g: any) => g.id)).toContain(job.body.id);
    const still = await call("GET", `/v1/generations/${job.body.id}`, { token: a.key });
    expect(still.body.status).toBe("queued");
  });

  it("A's private add-on is invisible and unusable to B; a public one is usable by all", async () => {
    const priv = await registerAddon(a.id, "a-private-style");
    const pub = await registerAddon(a.id, "a-public-style", { visibility: "public" });
    expect((await call("GET", `/v1/addons/${priv}`, { token: a.key })).status).toBe(200);
    const seen = await call("GET", `/v1/addons/${priv}`, { token: b.key });
    expect(seen.status).toBe(404);
    const listed = await call("GET", "/v1/addons", { token: b.key });
    const ids = listed.body.data.map((x: any) => x.id);
    expect(ids).not.toContain(priv);
    expect(ids).toContain(pub);

    const useForeign = await generate(b.key, { loras: [{ id: priv, scale: 0.8 }] });
    const useMissing = await generate(b.key, { loras: [{ id: "addon_00000000000000000000000000", scale: 0.8 }] });
    expect(useForeign.status).toBe(404);
    expect(useForeign.body.error.code).toBe(useMissing.body.error.code);
    expect(useForeign.body.error.message.replace(priv, "X")).toBe(
      useMissing.body.error.message.replace("addon_00000000000000000000000000", "X"),
    );

    const usePublic = await generate(b.key, { loras: [{ id: pub, scale: 0.8 }] });
    expect(usePublic.status, JSON.stringify(usePublic.body)).toBe(202);
    expect(usePublic.body.request.loras[0]).toMatchObject({ id: pub, version: 1, scale: 0.8, name: "a-public-style" });
    const useOwn = await generate(a.key, { loras: [{ id: `${priv}@1`, scale: 1 }] });
    expect(useOwn.status).toBe(202);
  });

  it("add-ons must be ready, of the right kind, and for the model's family", async () => {
    const pending = await registerAddon(a.id, "pending-style", { status: "validating" });
    const r1 = await generate(a.key, { loras: [{ id: pending }] });
    expect(r1.status).toBe(404); // no ready version exists yet
    const pinned = await generate(a.key, { loras: [{ id: `${pending}@1` }] });
    expect(pinned.status).toBe(400);
    expect(pinned.body.error.code).toBe("addon_not_ready");
    const cn = await registerAddon(a.id, "mask-cn", { kind: "controlnet" });
    const wrongKind = await generate(a.key, { loras: [{ id: cn }] });
    expect(wrongKind.status).toBe(400);
    expect(wrongKind.body.error.code).toBe("addon_kind_mismatch");
    const otherFamily = await registerAddon(a.id, "other-family-style", { family: "other-family" });
    const wrongFamily = await generate(a.key, { loras: [{ id: otherFamily }] });
    expect(wrongFamily.status).toBe(400);
    expect(wrongFamily.body.error.code).toBe("addon_family_mismatch");
    expect(wrongFamily.body.error.param).toBe("loras[0].id");
  });

  it("lists paginate by cursor without gaps or repeats", async () => {
    const t = await newTenant("pager");
    const ids: string[] = [];
    for (let i = 0; i < 5; i++) ids.push((await generate(t.key, { seed: i })).body.id);
    const seen: string[] = [];
    let cursor: string | null = null;
    do {
      const page: any = await call("GET", `/v1/generations?limit=2${cursor ? `&after=${cursor}` : ""}`, {
        token: t.key,
      });
      expect(page.status).toBe(200);
      seen.push(...page.body.data.map((g: any) => g.id));
      cursor = page.body.next_cursor;
    } while (cursor);
    expect(seen).toEqual([...ids].reverse());
    const filtered = await call("GET", "/v1/generations?status=succeeded", { token: t.key });
    expect(filtered.body.data).toHaveLength(0);
  });
  it("listing keys takes the keys:write scope: a read-only key cannot see the tenant's keys", async () => {
    const t = await newTenant("keys-scope", {}, ["addons:read", "generations:read"]);
    const r = await call("GET", "/v1/keys", { token: t.key });
    expect(r.status).toBe(403);
    expect(r.body.error.code).toBe("missing_scope");
    expect((await call("GET", "/v1/keys", { token: a.key })).status).toBe(200);
  });

  it("a public add-on shows other tenants its ready versions only; its owner sees all", async () => {
    const pub = await registerAddon(a.id, "a-public-versions", { visibility: "public" });
    await env.DB.prepare(
      "INSERT INTO addon_versions (addon_id, version, status, rejection_reason, storage_key, created_at, updated_at) VALUES (?, 2, 'rejected', 'not a LoRA of this family', 'x', 1, 1)",
    )
      .bind(pub)
      .run();
    const mine = await call("GET", `/v1/addons/${pub}/versions`, { token: a.key });
    expect(mine.body.data.map((v: any) => v.status).sort()).toEqual(["ready", "rejected"]);
    const theirs = await call("GET", `/v1/addons/${pub}/versions`, { token: b.key });
    expect(theirs.status).toBe(200);
    expect(theirs.body.data.map((v: any) => v.status)).toEqual(["ready"]);
    expect(JSON.stringify(theirs.body)).not.toContain("not a LoRA");
  });
});
