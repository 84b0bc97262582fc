/** Signing in to the dashboard: password sessions in a cookie, with a CSRF token for state changes. */
import { z } from "@hono/zod-openapi";
import { Email, User } from "./users.ts";

/** Password length bounds: long passphrases welcome; the upper bound caps the KDF's input. */
export const PASSWORD_MIN = 10;
export const PASSWORD_MAX = 200;

export const SignInBody = z
  .object({ email: Email, password: z.string().min(1).max(PASSWORD_MAX) })
  .strict()
  .openapi("SignIn");

/**
 * A new password: its length is checked in the handler (400 `weak_password`, not a generic `invalid_parameter`),
 * and documented here.
 */
const NewPassword = z
  .string()
  .max(1000)
  .openapi({
    minLength: PASSWORD_MIN,
    maxLength: PASSWORD_MAX,
    description: `${PASSWORD_MIN} to ${PASSWORD_MAX} characters, else 400 \`weak_password\``,
  });

export const SignUpBody = z
  .object({
    invite_token: z.string().min(1).max(200),
    name: z.string().trim().min(1).max(128),
    password: NewPassword,
  })
  .strict()
  .openapi("SignUp");

export const ChangePasswordBody = z
  .object({ current_password: z.string().min(1).max(PASSWORD_MAX), new_password: NewPassword })
  .strict()
  .openapi("ChangePassword");

export const SessionTenant = z.object({ id: z.string(), name: z.string() }).openapi("SessionTenant");

/** What signin, signup and `GET /v1/auth/session` answer; with an API key, `user` and `csrf_token` are null. */
export const Session = z
  .object({
    user: User.nullable(),
    tenant: SessionTenant,
    csrf_token: z
      .string()
      .nullable()
      .openapi({ description: "Send as `X-CSRF-Token` on every POST, PUT, PATCH and DELETE made with the cookie." }),
    key: z.object({ id: z.string(), name: z.string(), scopes: z.array(z.string()) }).optional(),
  })
  .openapi("Session");
