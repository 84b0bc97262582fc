import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { readTar, TarError, writeTar } from "./tar.ts";

describe("ControlNet add-on archives", () => {
  it("round-trips, and GNU tar reads what it writes", () => {
    const files = [
      { path: "manifest.json", data: new TextEncoder().encode('{"kind":"controlnet"}') },
      { path: "controlnet/model.onnx", data: new Uint8Array(1000).map((_, i) => i % 251) },
    ];
    const archive = writeTar(files);
    expect(readTar(archive).map((e) => [e.path, e.data.byteLength])).toEqual([
      ["manifest.json", 21],
      ["controlnet/model.onnx", 1000],
    ]);
    const dir = mkdtempSync(join(tmpdir(), "tar-"));
    writeFileSync(join(dir, "a.tar"), archive);
    execFileSync("tar", ["-xf", "a.tar"], { cwd: dir });
    expect(readFileSync(join(dir, "controlnet/model.onnx"))).toEqual(Buffer.from(files[1]!.data));
  });

  it("reads archives made by GNU tar", () => {
    const dir = mkdtempSync(join(tmpdir(), "tar-"));
    writeFileSync(join(dir, "manifest.json"), "{}");
    execFileSync("tar", ["--format=ustar", "-cf", "b.tar", "manifest.json"], { cwd: dir });
    expect(readTar(new Uint8Array(readFileSync(join(dir, "b.tar")))).map((e) => e.path)).toEqual(["manifest.json"]);
  });

  /** Rewrites a header's checksum after a test edits it, so only the edit itself can be refused. */
  function resum(archive: Uint8Array): Uint8Array {
    let sum = 0;
    for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : archive[i]!;
    archive.set(new TextEncoder().encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
    return archive;
  }

  describe("hostile archives", () => {
    it("refuses escaping paths and links even with valid checksums", () => {
      const good = writeTar([{ path: "x", data: new Uint8Array(10) }]);
      for (const path of ["/etc/passwd", "../../up", "a/../../b"]) {
        const bad = good.slice();
        bad.fill(0, 0, 100);
        bad.set(new TextEncoder().encode(path), 0);
        expect(() => readTar(resum(bad)), path).toThrow(/unsafe path/);
      }
      const link = good.slice();
      link[156] = "2".charCodeAt(0);
      expect(() => readTar(resum(link))).toThrow(/not a plain file/);
    });
  });

  describe("damaged archives", () => {
    it("refuses paths that escape, links, truncation and corrupt headers", () => {
      expect(() => writeTar([{ path: "../evil", data: new Uint8Array(1) }])).toThrow(TarError);
      const good = writeTar([{ path: "x", data: new Uint8Array(600) }]);
      const escaping = good.slice();
      escaping.set(new TextEncoder().encode("/etc/passwd\0"), 0);
      expect(() => readTar(escaping)).toThrow(/checksum|unsafe/);
      expect(() => readTar(good.subarray(0, 700))).toThrow(/truncated/);
      const link = good.slice();
      link[156] = "2".charCodeAt(0);
      expect(() => readTar(link)).toThrow(/checksum/);
    });
  });
});
