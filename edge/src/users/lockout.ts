/**
 * Slows password guessing: after 5 failed sign-ins for one email, or 20 from one client address, within 15 minutes,
 * sign-in is refused (429, Retry-After) for 30 s, doubling with each further failure up to 15 minutes. While locked,
 * attempts are not even checked, so a locked account cannot be probed. Failures are kept in D1 (login_attempts).
 */
import { sessionsTable } from "@imagegen/db";
import type { Context } from "hono";
import type { AppEnv } from "../context.ts";
import { ApiError } from "../errors.ts";
import { newId } from "../lib/ids.ts";

export const LOCKOUT_WINDOW_MS = 15 * 60_000;
export const MAX_FAILURES_PER_EMAIL = 5;
export const MAX_FAILURES_PER_IP = 20;
const FIRST_LOCK_MS = 30_000;

/** The client's address as Cloudflare reports it (a header clients cannot set through Cloudflare). */
export const clientIp = (c: Context<AppEnv>) => c.req.header("cf-connecting-ip") ?? "unknown";

function lockedUntil(failures: { count: number; last: number }, threshold: number): number {
  if (failures.count < threshold) return 0;
  return failures.last + Math.min(LOCKOUT_WINDOW_MS, FIRST_LOCK_MS * 2 ** (failures.count - threshold));
}

/**
 * Throws 429 `too_many_attempts` while the email or the address is locked out. Sign-up passes no email (an invite
 * token is what it guesses): its failures count against the address only.
 */
export async function assertNotLocked(c: Context<AppEnv>, email: string | undefined, now = Date.now()): Promise<void> {
  const f = await sessionsTable.recentFailures(c.var.db, email ?? "", clientIp(c), now - LOCKOUT_WINDOW_MS);
  const byEmail = email ? lockedUntil(f.email, MAX_FAILURES_PER_EMAIL) : 0;
  const until = Math.max(byEmail, lockedUntil(f.ip, MAX_FAILURES_PER_IP));
  if (until > now) {
    const seconds = Math.ceil((until - now) / 1000);
    throw new ApiError(
      429,
      "rate_limit_error",
      "too_many_attempts",
      `Too many failed attempts; try again in ${seconds} s.`,
      undefined,
      { "Retry-After": String(seconds) },
    );
  }
}

export async function recordFailure(c: Context<AppEnv>, email: string | undefined, now = Date.now()): Promise<void> {
  await sessionsTable.recordFailure(
    c.var.db,
    { id: newId("att", now), email: email ?? "", ip: clientIp(c), createdAt: now },
    now - LOCKOUT_WINDOW_MS,
  );
}
