/**
 * The three kinds of secret, each with its own prefix so that one presented in the wrong place gets a clear
 * error: tenant API keys (`igk_`), runner tokens (`igr_`), and the deployment's admin token (from env).
 */
export const API_KEY_PREFIX = "igk";
export const RUNNER_TOKEN_PREFIX = "igr";

/** How much of a key is kept in clear for display. */
export const displayPrefix = (secret: string) => `${secret.slice(0, 12)}…`;

export function bearer(header: string | undefined): string | undefined {
  const m = header?.match(/^Bearer\s+(\S+)\s*$/i);
  return m?.[1];
}
