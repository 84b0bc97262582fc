import { describe, expect, it } from "vitest";
import { ADDON_REF_PATTERN, formatAddonRef, parseAddonRef } from "./refs.ts";

describe("add-on references", () => {
  it("parse what format builds", () => {
    const ref = formatAddonRef("addon_01hzy3k8m2", 12);
    expect(ref).toBe("addon_01hzy3k8m2@12");
    expect(ADDON_REF_PATTERN.test(ref)).toBe(true);
    expect(parseAddonRef(ref)).toEqual({ id: "addon_01hzy3k8m2", version: 12 });
  });

  it("leave the version undefined when none is named", () => {
    expect(parseAddonRef("addon_01hzy3k8m2")).toEqual({ id: "addon_01hzy3k8m2", version: undefined });
    expect(ADDON_REF_PATTERN.test("addon_01hzy3k8m2@0")).toBe(false);
  });
});
