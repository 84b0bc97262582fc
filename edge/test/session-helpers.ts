/** Signed-in people for the users, auth and usage tests: invites, sign-up, and calls made with the session cookie. */
import { ADMIN, type Answer, call } from "./helpers.ts";

export const PASSWORD = "correct horse battery";

export interface Person {
  cookie: string;
  csrf: string;
  user: { id: string; email: string; role: string; tenant_id: string; name: string };
}

/** `ig_session=<token>` from an answer's Set-Cookie (undefined when none is set). */
export function sessionCookieOf(a: Answer): string | undefined {
  const set = a.headers.get("set-cookie") ?? "";
  return set.match(/(?:^|,\s*)(ig_session=[^;]*)/)?.[1];
}

export async function adminInvite(tenantId: string, email: string, role = "owner") {
  const r = await call("POST", `/admin/v1/tenants/${tenantId}/invites`, { token: ADMIN, body: { email, role } });
  if (r.status !== 201) throw new Error(`invite: ${r.status} ${JSON.stringify(r.body)}`);
  return r.body as { id: string; token: string; url: string; email: string; role: string };
}

export async function signUp(token: string, name = "Ada", password = PASSWORD, ip = "203.0.113.1"): Promise<Person> {
  const r = await call("POST", "/v1/auth/signup", {
    body: { invite_token: token, name, password },
    headers: { "cf-connecting-ip": ip },
  });
  if (r.status !== 200) throw new Error(`signup: ${r.status} ${JSON.stringify(r.body)}`);
  return { cookie: sessionCookieOf(r)!, csrf: r.body.csrf_token, user: r.body.user };
}

export async function signIn(email: string, password = PASSWORD, ip = "203.0.113.2") {
  return call("POST", "/v1/auth/signin", { body: { email, password }, headers: { "cf-connecting-ip": ip } });
}

/** A tenant's first owner, invited by the operator. */
export async function newOwner(tenantId: string, email: string): Promise<Person> {
  return signUp((await adminInvite(tenantId, email)).token, "Owner");
}

/** Someone the owner invites with `role`. */
export async function invitePerson(owner: Person, email: string, role: string): Promise<Person> {
  const r = await as(owner, "POST", "/v1/invites", { email, role });
  if (r.status !== 201) throw new Error(`invite: ${r.status} ${JSON.stringify(r.body)}`);
  return signUp(r.body.token, role);
}

/** A call as the signed-in person: the cookie, and the CSRF token a dashboard page sends. */
export function as<T = any>(
  p: Person,
  method: string,
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Answer<T>> {
  return call<T>(method, path, { body, headers: { cookie: p.cookie, "x-csrf-token": p.csrf, ...headers } });
}
