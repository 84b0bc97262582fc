/**
 * The one owner of the add-on reference `addon_id@version`: requests name add-ons with it (the version optional),
 * jobs record the pinned ones, runners report their warm set in it. Built and parsed here only.
 */

/** `addon_…` or `addon_…@<version>` (versions start at 1). */
export const ADDON_REF_PATTERN = /^[a-z]+_[0-9a-z]{1,40}(@[1-9][0-9]{0,5})?$/;

/** A pinned reference: the form jobs, leases and warm sets carry. */
export function formatAddonRef(id: string, version: number): string {
  return `${id}@${version}`;
}

/**
 * Splits a reference; `version` is undefined when the reference names no version (the latest is meant).
 *
 * @example
 * parseAddonRef("addon_01hzy@2") // { id: "addon_01hzy", version: 2 }
 */
export function parseAddonRef(ref: string): { id: string; version: number | undefined } {
  const at = ref.lastIndexOf("@");
  if (at < 0) return { id: ref, version: undefined };
  const version = Number(ref.slice(at + 1));
  return { id: ref.slice(0, at), version: Number.isInteger(version) && version > 0 ? version : undefined };
}
