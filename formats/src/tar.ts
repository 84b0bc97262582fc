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
  if (clean === "" || clean.startsWith("/") || clean.split("/").some((p) => p === ".."))
    throw new TarError(`unsafe path in archive: ${JSON.stringify(path)}`);
  return clean;
}

/** What one 512-byte header describes. */
export interface TarHeader {
  path: string;
  /** Where the entry's data starts in the archive, and its length. */
  offset: number;
  size: number;
  type: "file" | "folder";
}

/** Parses the header at `pos` of an archive of `archiveSize` bytes: null at the zero block that ends it; TarError for anything unsafe or damaged. */
export function parseTarHeader(header: Uint8Array, pos: number, archiveSize: number): TarHeader | null {
  if (header.every((b) => b === 0)) return null;
  const stored = Number.parseInt(field(header, 148, 8).trim() || "0", 8);
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : header[i]!;
  if (sum !== stored) throw new TarError(`bad header checksum at offset ${pos}`);
  const name = field(header, 0, 100);
  const prefix = field(header, 345, 155);
  // Octal digits only: parseInt would also take "-0", "+7" or "1e3" (reading 1).
  const sizeField = field(header, 124, 12).trim();
  const size = /^[0-7]*$/.test(sizeField) ? Number.parseInt(sizeField || "0", 8) : Number.NaN;
  const type = String.fromCharCode(header[156]!);
  if (!Number.isSafeInteger(size) || size < 0) throw new TarError(`bad size for ${name}`);
  const offset = pos + BLOCK;
  if (offset + size > archiveSize) throw new TarError(`archive truncated inside ${name}`);
  const path = prefix ? `${prefix}/${name}` : name;
  if (type === "0" || type === "\0") return { path: safePath(path), offset, size, type: "file" };
  if (type === "5") return { path, offset, size, type: "folder" };
  throw new TarError(`entry ${JSON.stringify(path)} is not a plain file or folder (type ${JSON.stringify(type)})`);
}

/** Where the header after this entry's data is. */
const nextTarHeader = (h: TarHeader) => h.offset + Math.ceil(h.size / BLOCK) * BLOCK;

export function readTar(archive: Uint8Array): TarEntry[] {
  const entries: TarEntry[] = [];
  for (let pos = 0; pos + BLOCK <= archive.byteLength; ) {
    const h = parseTarHeader(archive.subarray(pos, pos + BLOCK), pos, archive.byteLength);
    if (!h) break;
    if (h.type === "file") entries.push({ path: h.path, data: archive.subarray(h.offset, h.offset + h.size) });
    pos = nextTarHeader(h);
  }
  return entries;
}

/**
 * The files of an archive that is not in memory (an object in storage): one read per header, none of the data.
 * At most `maxEntries` entries, so a hostile archive cannot cost unbounded reads. A path stored twice means its last copy, as unpacking readTar's entries in order does.
 */
export async function listTar(
  read: (offset: number, length: number) => Promise<Uint8Array>,
  archiveSize: number,
  maxEntries = 64,
): Promise<Map<string, TarHeader>> {
  if (archiveSize < BLOCK) throw new TarError(`${archiveSize} bytes is too short for a tar archive`);
  const files = new Map<string, TarHeader>();
  for (let pos = 0, n = 0; pos + BLOCK <= archiveSize; n++) {
    if (n === maxEntries) throw new TarError(`more than ${maxEntries} entries`);
    const h = parseTarHeader(await read(pos, BLOCK), pos, archiveSize);
    if (!h) break;
    if (h.type === "file") files.set(h.path, h);
    pos = nextTarHeader(h);
  }
  return files;
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
