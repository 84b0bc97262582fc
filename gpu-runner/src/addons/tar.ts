/**
 * A ControlNet add-on travels as one file: a ustar archive of its bundle folder (manifest.json + ONNX). This
 * reads and writes the plain-file subset of ustar, refusing links, absolute paths and `..`, so an archive
 * can only ever write inside the folder it is unpacked into.
 */

export class TarError extends Error {
  override readonly name = "TarError";
}

export interface TarEntry {
  path: string;
  data: Uint8Array;
}

const BLOCK = 512;
const enc = new TextEncoder();
const dec = new TextDecoder();

function field(block: Uint8Array, offset: number, length: number): string {
  const raw = block.subarray(offset, offset + length);
  const end = raw.indexOf(0);
  return dec.decode(end >= 0 ? raw.subarray(0, end) : raw);
}

function safePath(path: string): string {
  const clean = path.replace(/^\.\//, "");
  if (clean === "" || clean.startsWith("/") || clean.split("/").some((p) => p === ".." )) throw new TarError(`unsafe path in archive: ${JSON.stringify(path)}`);
  return clean;
}

export function readTar(archive: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  let pos = 0;
  while (pos + BLOCK <= archive.byteLength) {
    const header = archive.subarray(pos, pos + BLOCK);
    if (header.every((b) => b === 0)) break;
    const stored = Number.parseInt(field(header, 148, 8).trim() || "0", 8);
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : header[i]!;
    if (sum !== stored) throw new TarError(`bad header checksum at offset ${pos}`);
    const name = field(header, 0, 100);
    const prefix = field(header, 345, 155);
    const size = Number.parseInt(field(header, 124, 12).trim() || "0", 8);
    const type = String.fromCharCode(header[156]!);
    if (!Number.isSafeInteger(size) || size < 0) throw new TarError(`bad size for ${name}`);
    const start = pos + BLOCK;
    if (start + size > archive.byteLength) throw new TarError(`archive truncated inside ${name}`);
    const path = prefix ? `${prefix}/${name}` : name;
    if (type === "0" || type === "\0") entries.push({ path: safePath(path), data: archive.subarray(start, start + size) });
    else if (type !== "5") throw new TarError(`entry ${JSON.stringify(path)} is not a plain file or folder (type ${JSON.stringify(type)})`);
    pos = start + Math.ceil(size / BLOCK) * BLOCK;
  }
  return entries;
}

export function writeTar(entries: TarEntry[]): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const path = safePath(e.path);
    if (enc.encode(path).byteLength > 100) throw new TarError(`path too long for this writer: ${path}`);
    const header = new Uint8Array(BLOCK);
    header.set(enc.encode(path), 0);
    header.set(enc.encode("0000644\0"), 100);
    header.set(enc.encode("0000000\0"), 108);
    header.set(enc.encode("0000000\0"), 116);
    header.set(enc.encode(e.data.byteLength.toString(8).padStart(11, "0") + "\0"), 124);
    header.set(enc.encode("00000000000\0"), 136);
    header[156] = "0".charCodeAt(0);
    header.set(enc.encode("ustar\0" + "00"), 257);
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : header[i]!;
    header.set(enc.encode(sum.toString(8).padStart(6, "0") + "\0 "), 148);
    parts.push(header, e.data, new Uint8Array((BLOCK - (e.data.byteLength % BLOCK)) % BLOCK));
  }
  parts.push(new Uint8Array(BLOCK * 2));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.byteLength;
  }
  return out;
}
