import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { anyBytes, fuzz, fuzzAsync, fuzzTimeout, mutated, parses, parsesAsync } from "../fuzz/harness.ts";
import { listTar, readTar, TarError, writeTar } from "./tar.ts";

const S = "tar";
const enc = new TextEncoder();

const entry = fc.record({
  path: fc
    .stringMatching(/^[a-z0-9_.-]{1,20}(\/[a-z0-9_.-]{1,20}){0,2}$/)
    .filter((p) => !p.split("/").some((s) => s === ".." || s === ".")),
  data: fc.uint8Array({ maxLength: 1100 }),
});
const validArchive = fc.array(entry, { maxLength: 4 }).map(writeTar);

/** Sets a header field of the entry at `block` and recomputes the checksum, so the damage gets past it. */
function setField(archive: Uint8Array, block: number, offset: number, length: number, value: Uint8Array): Uint8Array {
  const out = archive.slice();
  const at = (block % Math.max(1, Math.floor(out.byteLength / 512))) * 512;
  if (at + 512 > out.byteLength) return out;
  out.fill(0, at + offset, at + offset + length);
  out.set(value.subarray(0, length), at + offset);
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 32 : out[at + i]!;
  out.set(enc.encode(`${sum.toString(8).padStart(6, "0")}\0 `), at + 148);
  return out;
}

const FIELDS = { name: [0, 100], size: [124, 12], type: [156, 1], prefix: [345, 155] } as const;
const fieldValue = fc.oneof(
  fc.constantFrom(
    "../x",
    "/etc/passwd",
    "a/../../b",
    "..",
    ".",
    "./",
    "77777777777",
    "777777777777",
    "-1",
    "1e3",
    "0x10",
    "NaN",
    "1",
    "2",
    "5",
    "L",
    "K",
    "x",
    "",
  ),
  fc.string({ maxLength: 20 }),
  fc.nat().map((n) => n.toString(8)),
);
const damagedArchive = fc
  .tuple(
    validArchive,
    fc.array(fc.tuple(fc.nat(), fc.constantFrom(...Object.values(FIELDS)), fieldValue), { minLength: 1, maxLength: 3 }),
  )
  .map(([archive, edits]) =>
    edits.reduce(
      (a, [block, [offset, length], value]) => setField(a, block, offset, length, enc.encode(value)),
      archive,
    ),
  );

function check(archive: Uint8Array): void {
  const entries = parses(archive.byteLength, [TarError], () => readTar(archive));
  for (const e of entries ?? []) {
    expect(e.path.startsWith("/") || e.path.split("/").includes("..")).toBe(false);
    expect(e.data.buffer).toBe(archive.buffer); // a view of the archive, never a copy of a claimed size
  }
}

/** listTar (range reads, as the edge validates) sees the same files as readTar, each its last copy. */
async function agree(archive: Uint8Array): Promise<void> {
  const read = async (offset: number, length: number) => archive.subarray(offset, offset + length);
  const listed = await parsesAsync(archive.byteLength, [TarError], () => listTar(read, archive.byteLength, 1 << 20));
  const entries = parses(archive.byteLength, [TarError], () => readTar(archive));
  if (listed && entries) {
    const last = new Map(entries.map((e) => [e.path, e.data.byteLength]));
    expect(new Map([...listed].map(([p, h]) => [p, h.size]))).toEqual(last);
  }
}

describe("tar under fuzzing", () => {
  it(
    "refuses arbitrary bytes with TarError",
    () => fuzz(S, "arbitrary bytes", anyBytes(2048), check, 3000),
    fuzzTimeout(),
  );

  it(
    "reads mutated valid archives or refuses them",
    () => fuzz(S, "mutated valid archives", mutated(validArchive), check, 3000),
    fuzzTimeout(),
  );

  it(
    "reads archives with hostile header fields (checksums fixed: paths, sizes, types) or refuses them",
    () => fuzz(S, "hostile header fields", damagedArchive, check, 3000),
    fuzzTimeout(),
  );

  it(
    "listTar agrees with readTar on damaged archives",
    () => fuzzAsync(S, "listTar agrees with readTar", fc.oneof(damagedArchive, mutated(validArchive)), agree, 1500),
    fuzzTimeout(),
  );

  it(
    "reads back what writeTar wrote",
    () =>
      fuzz(
        S,
        "round trip",
        fc.array(entry, { maxLength: 4 }),
        (entries) => {
          const back = readTar(writeTar(entries));
          expect(back.map((e) => [e.path.replace(/^\.\//, ""), [...e.data]])).toEqual(
            entries.map((e) => [e.path.replace(/^\.\//, ""), [...e.data]]),
          );
        },
        1000,
      ),
    fuzzTimeout(),
  );

  it('refuses a size field that is not octal digits (regression: "-0" and "1e3" were read)', () => {
    for (const size of ["-0", "+1", "1e3", "0x1"]) {
      const archive = setField(writeTar([{ path: "a", data: new Uint8Array(1) }]), 0, 124, 12, enc.encode(`${size}\0`));
      expect(() => readTar(archive)).toThrow(/bad size/);
    }
  });

  it("refuses an entry claiming 8 GB before reading it", () => {
    const archive = setField(
      writeTar([{ path: "a", data: new Uint8Array(1) }]),
      0,
      124,
      12,
      enc.encode("77777777777\0"),
    );
    expect(() => readTar(archive)).toThrow(/truncated/);
  });
});
