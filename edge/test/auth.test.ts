import { env, exports } from "cloudflare:workers";
import { beforeAll, describe, expect, it } from "vitest";
import { verifyPassword } from "../src/users/password.ts";
import { ADMIN, call, newTenant, registerModel } from "./helpers.ts";
import { PASSWORD, adminInvite, as, newOwner, sessionCookieOf, signIn } from "./session-helpers.ts";

let t: Awaited<ReturnType<typeof newTenant>>;

beforeAll(async () => {
  await registerModel();
  t = await newTenant("auth-tenant");
});

describe("invite, sign-up and the session cookie", () => {
  it("an operator's invite signs up the first owner, whose cookie then authenticates /v1", async () => {
    const inv = await adminInvite(t.id, "First.Owner@Example.com");
    expect(inv.email).toBe("first.owner@example.com");
    expect(inv.role).toBe("owner");
    expect(inv.url).toBe(`http://edge.test/dashboard/signup?invite=${inv.token}`);
    const r = await call("POST", "/v1/auth/signup", {
      body: { invite_token: inv.token, name: "Ada", password: PASSWORD },
    });
    expect(r.status, JSON.stringify(r.body)).toBe(200);
    expect(r.body.user).toMatchObject({
      email: "first.owner@example.com",
      name: "Ada",
      role: "owner",
      tenant_id: t.id,
    });
    expect(r.body.tenant).toEqual({ id: t.id, name: "auth-tenant" });
    expect(r.body.csrf_token).toMatch(/^csrf_/);

    const setCookie = r.headers.get("set-cookie")!;
    expect(setCookie).toMatch(/^ig_session=igs_[\w-]+;/);
    expect(setCookie).toContain("HttpOnly");
    expect(setCookie).toContain("SameSite=Strict");
    expect(setCookie).toContain("Path=/");
    expect(setCookie).not.toContain("Secure"); // plain http here

    const cookie = sessionCookieOf(r)!;
    const session = await call("GET", "/v1/auth/session", { headers: { cookie } });
    expect(session.status).toBe(200);
    expect(session.body).toMatchObject({ user: { id: r.body.user.id }, csrf_token: r.body.csrf_token });
    expect((await call("GET", "/v1/generations", { headers: { cookie } })).status).toBe(200);
    // The invite is spent.
    const again = await call("POST", "/v1/auth/signup", {
      body: { invite_token: inv.token, name: "Eve", password: PASSWORD },
    });
    expect(again.status).toBe(400);
    expect(again.body.error).toMatchObject({ code: "invalid_invite", param: "invite_token" });
  });

  it("sets Secure on the cookie when served over https", async () => {
    const inv = await adminInvite(t.id, "secure@example.com", "member");
    const worker = (exports as unknown as { default: Fetcher }).default;
    const res = await worker.fetch(
      new Request("https://edge.test/v1/auth/signup", {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ invite_token: inv.token, name: "S", password: PASSWORD }),
      }),
    );
    expect(res.status).toBe(200);
    const setCookie = res.headers.get("set-cookie")!;
    expect(setCookie).toContain("Secure");
    expect(setCookie).toContain("HttpOnly");
    expect(setCookie).toContain("SameSite=Strict");
  });

  it("refuses weak passwords, unknown and expired invites, and an email that has an account", async () => {
    const inv = await adminInvite(t.id, "weak@example.com", "member");
    const weak = await call("POST", "/v1/auth/signup", {
      body: { invite_token: inv.token, name: "W", password: "short" },
    });
    expect(weak.status).toBe(400);
    expect(weak.body.error).toMatchObject({ code: "weak_password", param: "password" });
    const unknown = await call("POST", "/v1/auth/signup", {
      body: { invite_token: "igi_nope", name: "W", password: PASSWORD },
      headers: { "cf-connecting-ip": "198.51.100.7" },
    });
    expect(unknown.status).toBe(400);
    expect(unknown.body.error.code).toBe("invalid_invite");
    await env.DB.prepare("UPDATE invites SET expires_at = ? WHERE id = ?")
      .bind(Date.now() - 1, inv.id)
      .run();
    const expired = await call("POST", "/v1/auth/signup", {
      body: { invite_token: inv.token, name: "W", password: PASSWORD },
    });
    expect(expired.status).toBe(400);
    expect(expired.body.error.code).toBe("invalid_invite");
    const taken = await call("POST", `/admin/v1/tenants/${t.id}/invites`, {
      token: ADMIN,
      body: { email: "first.owner@example.com" },
    });
    expect(taken.status).toBe(409);
    expect(taken.body.error.code).toBe("email_taken");
  });

  it("stores a PBKDF2-SHA-256 hash (100,000 iterations, salted) that verifies and is not the password", async () => {
    const row = await env.DB.prepare("SELECT password_hash FROM users WHERE email = ?")
      .bind("first.owner@example.com")
      .first<{ password_hash: string }>();
    const stored = row!.password_hash;
    expect(stored).not.toContain(PASSWORD);
    const [scheme, iterations, salt, hash] = stored.split("$");
    expect(scheme).toBe("pbkdf2-sha256");
    expect(Number(iterations)).toBe(100_000);
    expect(atob(salt!).length).toBe(16);
    expect(atob(hash!).length).toBe(32);
    expect(await verifyPassword(PASSWORD, stored)).toBe(true);
    expect(await verifyPassword(`${PASSWORD}!`, stored)).toBe(false);
    // Two users with the same password get different hashes (the salt).
    const other = await env.DB.prepare("SELECT password_hash FROM users WHERE email = ?")
      .bind("secure@example.com")
      .first<{ password_hash: string }>();
    expect(other!.password_hash).not.toBe(stored);
  });
});

describe("sign-in and lockout", () => {
  it("signs in with the right password; a wrong password and an unknown email get the same 401", async () => {
    const ok = await signIn("FIRST.owner@example.com");
    expect(ok.status).toBe(200);
    expect(sessionCookieOf(ok)).toBeDefined();
    expect(ok.body.user.email).toBe("first.owner@example.com");
    const wrong = await signIn("first.owner@example.com", "not the password");
    const unknown = await signIn("nobody@example.com", "not the password");
    expect(wrong.status).toBe(401);
    expect(unknown.status).toBe(401);
    expect(wrong.body.error.code).toBe("invalid_credentials");
    expect(wrong.body.error.message).toBe(unknown.body.error.message);
    expect(sessionCookieOf(wrong)).toBeUndefined();
  });

  it("locks an email out after 5 failures (429, Retry-After), even for the right password, and the lock doubles", async () => {
    const person = await newOwner((await newTenant("lockout")).id, "locked@example.com");
    expect(person.user.email).toBe("locked@example.com");
    for (let i = 0; i < 5; i++) {
      const r = await signIn("locked@example.com", "wrong password", `192.0.2.${i}`);
      expect(r.status).toBe(401);
    }
    const locked = await signIn("locked@example.com", PASSWORD, "192.0.2.99");
    expect(locked.status).toBe(429);
    expect(locked.body.error).toMatchObject({ type: "rate_limit_error", code: "too_many_attempts" });
    const first = Number(locked.headers.get("retry-after"));
    expect(first).toBeGreaterThan(0);
    expect(first).toBeLessThanOrEqual(30);
    // Once the first lock has passed (moved back in time here), one more failure locks twice as long.
    await env.DB.prepare("UPDATE login_attempts SET created_at = created_at - 31000 WHERE email = ?")
      .bind("locked@example.com")
      .run();
    expect((await signIn("locked@example.com", "wrong again", "192.0.2.98")).status).toBe(401);
    const second = await signIn("locked@example.com", PASSWORD, "192.0.2.97");
    expect(second.status).toBe(429);
    expect(Number(second.headers.get("retry-after"))).toBeGreaterThan(30);
    expect(Number(second.headers.get("retry-after"))).toBeLessThanOrEqual(60);
  });

  it("locks an address out after 20 failures whatever the emails", async () => {
    for (let i = 0; i < 20; i++) expect((await signIn(`guess${i}@example.com`, "x", "198.51.100.20")).status).toBe(401);
    const r = await signIn("first.owner@example.com", PASSWORD, "198.51.100.20");
    expect(r.status).toBe(429);
    expect(r.headers.get("retry-after")).toBeTruthy();
    // Another address is not affected.
    expect((await signIn("first.owner@example.com", PASSWORD, "198.51.100.21")).status).toBe(200);
  });
});

describe("CSRF and Origin on cookie-authenticated state changes", () => {
  it("refuses a state change without the CSRF token, with a wrong one, or from another Origin; Bearer keys need none", async () => {
    const p = await newOwner((await newTenant("csrf")).id, "csrf@example.com");
    const body = { prompt: "a red circle" };
    const missing = await call("POST", "/v1/keys", { body: { name: "k" }, headers: { cookie: p.cookie } });
    expect(missing.status).toBe(403);
    expect(missing.body.error.code).toBe("csrf_failed");
    const wrong = await call("POST", "/v1/generations", {
      body,
      headers: { cookie: p.cookie, "x-csrf-token": `${p.csrf}x` },
    });
    expect(wrong.status).toBe(403);
    expect(wrong.body.error.code).toBe("csrf_failed");
    const foreign = await as(p, "POST", "/v1/generations", body, { origin: "https://evil.example" });
    expect(foreign.status).toBe(403);
    expect(foreign.body.error.code).toBe("csrf_failed");
    const sameOrigin = await as(p, "POST", "/v1/generations", body, { origin: "http://edge.test" });
    expect(sameOrigin.status, JSON.stringify(sameOrigin.body)).toBe(202);
    // Reads need no token.
    expect((await call("GET", "/v1/keys", { headers: { cookie: p.cookie } })).status).toBe(200);
    // A program with a key sends no cookie and no token.
    expect((await call("POST", "/v1/generations", { token: t.key, body })).status).toBe(202);
    const apiSession = await call("GET", "/v1/auth/session", { token: t.key });
    expect(apiSession.body).toMatchObject({ user: null, csrf_token: null, key: { id: t.keyId } });
  });

  it("refuses an unknown or expired session cookie with 401", async () => {
    const p = await newOwner((await newTenant("expiry")).id, "expiry@example.com");
    expect((await call("GET", "/v1/auth/session", { headers: { cookie: "ig_session=igs_forged" } })).status).toBe(401);
    expect((await call("GET", "/v1/auth/session")).status).toBe(401);
    await env.DB.prepare("UPDATE sessions SET last_seen_at = ? WHERE user_id = ?")
      .bind(Date.now() - 8 * 86_400_000, p.user.id)
      .run();
    const idle = await call("GET", "/v1/auth/session", { headers: { cookie: p.cookie } });
    expect(idle.status).toBe(401);
    expect(idle.body.error.code).toBe("invalid_credentials");
    expect(idle.headers.get("set-cookie")).toMatch(/ig_session=;.*Max-Age=0/); // the browser forgets it
  });
});

describe("sign-out, sign-out everywhere, password change", () => {
  it("signs out one session and clears the cookie; the others stay", async () => {
    const p = await newOwner((await newTenant("signout")).id, "signout@example.com");
    const second = await signIn("signout@example.com");
    const other = sessionCookieOf(second)!;
    const out = await as(p, "POST", "/v1/auth/signout");
    expect(out.status).toBe(204);
    expect(out.headers.get("set-cookie")).toMatch(/ig_session=;.*Max-Age=0/);
    expect((await call("GET", "/v1/auth/session", { headers: { cookie: p.cookie } })).status).toBe(401);
    expect((await call("GET", "/v1/auth/session", { headers: { cookie: other } })).status).toBe(200);
    // An API key has no session to end.
    const key = await call("POST", "/v1/auth/signout", { token: t.key });
    expect(key.status).toBe(403);
    expect(key.body.error.code).toBe("session_required");
  });

  it("signs out everywhere", async () => {
    const p = await newOwner((await newTenant("everywhere")).id, "everywhere@example.com");
    const others = [await signIn("everywhere@example.com"), await signIn("everywhere@example.com")].map(
      (r) => sessionCookieOf(r)!,
    );
    expect((await as(p, "POST", "/v1/auth/signout-all")).status).toBe(204);
    for (const cookie of [p.cookie, ...others]) {
      expect((await call("GET", "/v1/auth/session", { headers: { cookie } })).status).toBe(401);
    }
  });

  it("changes the password: the old one stops working, other sessions end, this one stays", async () => {
    const p = await newOwner((await newTenant("password")).id, "password@example.com");
    const other = sessionCookieOf(await signIn("password@example.com"))!;
    const wrong = await as(p, "POST", "/v1/auth/password", {
      current_password: "nope",
      new_password: "a new passphrase",
    });
    expect(wrong.status).toBe(400);
    expect(wrong.body.error).toMatchObject({ code: "wrong_password", param: "current_password" });
    const weak = await as(p, "POST", "/v1/auth/password", { current_password: PASSWORD, new_password: "short" });
    expect(weak.body.error).toMatchObject({ code: "weak_password", param: "new_password" });
    const changed = await as(p, "POST", "/v1/auth/password", {
      current_password: PASSWORD,
      new_password: "a new passphrase",
    });
    expect(changed.status).toBe(204);
    expect((await call("GET", "/v1/auth/session", { headers: { cookie: p.cookie } })).status).toBe(200);
    expect((await call("GET", "/v1/auth/session", { headers: { cookie: other } })).status).toBe(401);
    expect((await signIn("password@example.com", PASSWORD, "192.0.2.200")).status).toBe(401);
    expect((await signIn("password@example.com", "a new passphrase", "192.0.2.201")).status).toBe(200);
  });
});
