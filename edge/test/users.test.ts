import { beforeAll, describe, expect, it } from "vitest";
import { call, newTenant, registerModel } from "./helpers.ts";
import { type Person, as, invitePerson, newOwner } from "./session-helpers.ts";

let a: Awaited<ReturnType<typeof newTenant>>;
let b: Awaited<ReturnType<typeof newTenant>>;
let owner: Person;
let admin: Person;
let member: Person;
let ownerB: Person;

beforeAll(async () => {
  await registerModel();
  a = await newTenant("users-a");
  b = await newTenant("users-b");
  owner = await newOwner(a.id, "owner@a.example");
  admin = await invitePerson(owner, "admin@a.example", "admin");
  member = await invitePerson(owner, "member@a.example", "member");
  ownerB = await newOwner(b.id, "owner@b.example");
});

const refused = (r: { status: number; body: any }) => {
  expect(r.status, JSON.stringify(r.body)).toBe(403);
  expect(r.body.error).toMatchObject({ type: "permission_error", code: "insufficient_role" });
};

describe("roles", () => {
  it("a member generates and reads add-ons, but is refused keys, add-on writes, webhooks and users", async () => {
    expect(member.user.role).toBe("member");
    expect((await as(member, "POST", "/v1/generations", { prompt: "a blue square" })).status).toBe(202);
    expect((await as(member, "GET", "/v1/addons")).status).toBe(200);
    expect((await as(member, "GET", "/v1/usage")).status).toBe(200);
    refused(await as(member, "GET", "/v1/keys"));
    refused(await as(member, "POST", "/v1/keys", { name: "mine" }));
    const addon = { kind: "lora", name: "style", family: "tiny-shapes", size_bytes: 100, sha256: "0".repeat(64) };
    refused(await as(member, "POST", "/v1/addons", addon));
    expect((await as(admin, "POST", "/v1/addons", addon)).status).toBe(201);
    refused(await as(member, "GET", "/v1/webhooks/endpoints"));
    refused(await as(member, "POST", "/v1/webhooks/endpoints", { url: "https://hooks.test/m" }));
    refused(await as(member, "GET", "/v1/webhooks/deliveries"));
    refused(await as(member, "GET", "/v1/users"));
    refused(await as(member, "POST", "/v1/invites", { email: "x@a.example", role: "member" }));
    refused(await as(member, "PATCH", `/v1/users/${member.user.id}`, { role: "owner" }));
  });

  it("an admin manages keys and webhooks and reads users, but is refused managing users and invites", async () => {
    const key = await as(admin, "POST", "/v1/keys", { name: "from-admin" });
    expect(key.status, JSON.stringify(key.body)).toBe(201);
    expect((await as(admin, "DELETE", `/v1/keys/${key.body.id}`)).status).toBe(200);
    expect((await as(admin, "GET", "/v1/webhooks/endpoints")).status).toBe(200);
    expect((await as(admin, "GET", "/v1/webhooks/deliveries")).status).toBe(200);
    const list = await as(admin, "GET", "/v1/users");
    expect(list.status).toBe(200);
    expect(list.body.data.map((u: any) => u.email).sort()).toEqual([
      "admin@a.example",
      "member@a.example",
      "owner@a.example",
    ]);
    expect(Object.keys(list.body.data[0]).sort()).toEqual(["created_at", "email", "id", "name", "role", "tenant_id"]);
    refused(await as(admin, "POST", "/v1/invites", { email: "y@a.example", role: "member" }));
    refused(await as(admin, "PATCH", `/v1/users/${member.user.id}`, { role: "admin" }));
    refused(await as(admin, "DELETE", `/v1/users/${member.user.id}`));
  });

  it("an API key never manages people, whatever its scopes", async () => {
    refused(await call("POST", "/v1/invites", { token: a.key, body: { email: "k@a.example", role: "member" } }));
    refused(await call("PATCH", `/v1/users/${member.user.id}`, { token: a.key, body: { role: "owner" } }));
    expect((await call("GET", "/v1/users", { token: a.key })).status).toBe(200);
  });

  it("a role change takes effect on the user's existing session at once", async () => {
    const p = await invitePerson(owner, "promoted@a.example", "member");
    refused(await as(p, "GET", "/v1/keys"));
    const up = await as(owner, "PATCH", `/v1/users/${p.user.id}`, { role: "admin" });
    expect(up.status).toBe(200);
    expect(up.body.role).toBe("admin");
    expect((await as(p, "GET", "/v1/keys")).status).toBe(200);
  });
});

describe("owners manage users and invites", () => {
  it("invites: created with a link shown once, listed without it, withdrawn", async () => {
    const inv = await as(owner, "POST", "/v1/invites", { email: "Later@A.example", role: "member" });
    expect(inv.status).toBe(201);
    expect(inv.body).toMatchObject({
      email: "later@a.example",
      role: "member",
      used_at: null,
      created_by: owner.user.id,
    });
    expect(inv.body.url).toBe(`http://edge.test/dashboard/signup?invite=${inv.body.token}`);
    const list = await as(owner, "GET", "/v1/invites");
    const listed = list.body.data.find((i: any) => i.id === inv.body.id);
    expect(listed).toBeDefined();
    expect(listed.token).toBeUndefined();
    expect(listed.url).toBeUndefined();
    expect((await as(owner, "DELETE", `/v1/invites/${inv.body.id}`)).status).toBe(204);
    const signup = await call("POST", "/v1/auth/signup", {
      body: { invite_token: inv.body.token, name: "L", password: "correct horse battery" },
    });
    expect(signup.body.error.code).toBe("invalid_invite");
    const taken = await as(owner, "POST", "/v1/invites", { email: "member@a.example", role: "member" });
    expect(taken.status).toBe(409);
    expect(taken.body.error.code).toBe("email_taken");
  });

  it("the last owner can be neither demoted nor deleted; with a second owner, they can", async () => {
    const demote = await as(owner, "PATCH", `/v1/users/${owner.user.id}`, { role: "admin" });
    expect(demote.status).toBe(409);
    expect(demote.body.error.code).toBe("last_owner");
    const del = await as(owner, "DELETE", `/v1/users/${owner.user.id}`);
    expect(del.status).toBe(409);
    expect(del.body.error.code).toBe("last_owner");

    const second = await invitePerson(owner, "second-owner@a.example", "owner");
    expect(second.user.role).toBe("owner");
    const demoted = await as(second, "PATCH", `/v1/users/${owner.user.id}`, { role: "admin" });
    expect(demoted.status).toBe(200);
    // Now `second` is the last owner.
    expect((await as(second, "PATCH", `/v1/users/${second.user.id}`, { role: "member" })).body.error.code).toBe(
      "last_owner",
    );
    expect((await as(second, "PATCH", `/v1/users/${owner.user.id}`, { role: "owner" })).status).toBe(200);
  });

  it("deleting a user ends their sessions", async () => {
    const p = await invitePerson(owner, "leaving@a.example", "member");
    expect((await as(p, "GET", "/v1/auth/session")).status).toBe(200);
    expect((await as(owner, "DELETE", `/v1/users/${p.user.id}`)).status).toBe(204);
    expect((await as(p, "GET", "/v1/auth/session")).status).toBe(401);
    expect((await as(owner, "DELETE", `/v1/users/${p.user.id}`)).status).toBe(404);
  });
});

describe("tenant isolation", () => {
  it("another tenant's users and invites are never visible nor reachable", async () => {
    const inv = await as(owner, "POST", "/v1/invites", { email: "pending@a.example", role: "member" });
    const usersB = await as(ownerB, "GET", "/v1/users");
    expect(usersB.body.data.map((u: any) => u.email)).toEqual(["owner@b.example"]);
    const invitesB = await as(ownerB, "GET", "/v1/invites");
    expect(invitesB.body.data.map((i: any) => i.id)).not.toContain(inv.body.id);
    expect((await call("GET", "/v1/users", { token: b.key })).body.data.map((u: any) => u.tenant_id)).toEqual([b.id]);
    const patch = await as(ownerB, "PATCH", `/v1/users/${member.user.id}`, { role: "owner" });
    expect(patch.status).toBe(404);
    expect((await as(ownerB, "DELETE", `/v1/users/${member.user.id}`)).status).toBe(404);
    expect((await as(ownerB, "DELETE", `/v1/invites/${inv.body.id}`)).status).toBe(404);
    expect((await as(member, "GET", "/v1/auth/session")).body.user.role).toBe("member");
    // A's session does not read B's generations either.
    const jobB = await call("POST", "/v1/generations", { token: b.key, body: { prompt: "b's job" } });
    expect((await as(owner, "GET", `/v1/generations/${jobB.body.id}`)).status).toBe(404);
  });
});
