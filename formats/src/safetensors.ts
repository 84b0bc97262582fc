/**
 * A strict safetensors reader (REFERENCE.md, "Formats"). Add-ons come from tenants, so nothing is trusted: the
 * header length is bounded, the JSON must parse, every dtype must be known, every tensor's byte range must match
 * its shape and lie inside the file, ranges must tile the data without gaps or overlaps, and floats must be
 * finite. Pure TypeScript with no Node APIs: the edge validates uploads with the same code the runner loads with.
 */

export const DTYPE_BYTES = {
  F64: 8,
  F32: 4,
  F16: 2,
  BF16: 2,
  I64: 8,
  I32: 4,
  I16: 2,
  I8: 1,
  U64: 8,
  U32: 4,
  U16: 2,
  U8: 1,
  BOOL: 1,
  F8_E4M3: 1,
  F8_E5M2: 1,
} as const;
export type Dtype = keyof typeof DTYPE_BYTES;

/** The reference reader's cap on the header (100 MB). */
export const MAX_HEADER_BYTES = 100_000_000;

export class SafetensorsError extends Error {
  override readonly name = "SafetensorsError";
}

export interface TensorInfo {
  name: string;
  dtype: Dtype;
  shape: number[];
  /** Byte range relative to the start of the data section. */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Where the data section starts in the file: 8 + header length. */
  dataOffset: number;
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
}

/** Bytes needed from the start of the file to parse the header (read 8 bytes first to learn it). */
export function headerByteLength(first8: Uint8Array): number {
  if (first8.byteLength < 8) throw new SafetensorsError("file is shorter than the 8-byte header length");
  const n = new DataView(first8.buffer, first8.byteOffset, 8).getBigUint64(0, true);
  if (n > BigInt(MAX_HEADER_BYTES))
    throw new SafetensorsError(`header length ${n} exceeds the ${MAX_HEADER_BYTES}-byte limit`);
  return 8 + Number(n);
}

const isCount = (v: unknown): v is number => typeof v === "number" && Number.isSafeInteger(v) && v >= 0;

/**
 * Parses and checks the header. `prefix` holds at least the first `headerByteLength` bytes of a file of
 * `fileLength` bytes (the whole file, or a range read of its head).
 */
export function parseHeader(prefix: Uint8Array, fileLength: number): SafetensorsHeader {
  const dataOffset = headerByteLength(prefix);
  if (dataOffset > fileLength)
    throw new SafetensorsError(`header claims ${dataOffset - 8} bytes but the file has ${fileLength} (truncated?)`);
  if (prefix.byteLength < dataOffset) throw new SafetensorsError("not enough bytes given to read the header");
  let json: unknown;
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true, ignoreBOM: false }).decode(prefix.subarray(8, dataOffset));
    json = JSON.parse(text);
  } catch (err) {
    throw new SafetensorsError(`header is not valid UTF-8 JSON: ${(err as Error).message}`);
  }
  // JSON.parse keeps the last of two equal keys: a reader that keeps the first would see another file.
  const twice = duplicateKey(text);
  if (twice !== undefined) throw new SafetensorsError(`header names ${JSON.stringify(twice)} twice`);
  if (json === null || typeof json !== "object" || Array.isArray(json))
    throw new SafetensorsError("header must be a JSON object");

  const tensors = new Map<string, TensorInfo>();
  let metadata: Record<string, string> = {};
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === "__metadata__") {
      if (
        entry === null ||
        typeof entry !== "object" ||
        Array.isArray(entry) ||
        Object.values(entry).some((v) => typeof v !== "string")
      ) {
        throw new SafetensorsError("__metadata__ must map strings to strings");
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    const e = entry as { dtype?: unknown; shape?: unknown; data_offsets?: unknown };
    if (e === null || typeof e !== "object") throw new SafetensorsError(`tensor '${name}': entry must be an object`);
    if (typeof e.dtype !== "string" || !(e.dtype in DTYPE_BYTES))
      throw new SafetensorsError(`tensor '${name}': unknown dtype ${JSON.stringify(e.dtype)}`);
    if (!Array.isArray(e.shape) || !e.shape.every(isCount))
      throw new SafetensorsError(`tensor '${name}': shape must be a list of non-negative integers`);
    const offsets = e.data_offsets;
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0]! > offsets[1]!) {
      throw new SafetensorsError(`tensor '${name}': data_offsets must be [begin, end] with begin ≤ end`);
    }
    const dtype = e.dtype as Dtype;
    const shape = e.shape as number[];
    const elements = shape.reduce((a, b) => a * b, 1);
    const [begin, end] = offsets as [number, number];
    if (!Number.isSafeInteger(elements * DTYPE_BYTES[dtype]) || end - begin !== elements * DTYPE_BYTES[dtype]) {
      throw new SafetensorsError(
        `tensor '${name}': ${end - begin} bytes for shape [${shape}] of ${dtype} (expected ${elements * DTYPE_BYTES[dtype]})`,
      );
    }
    tensors.set(name, { name, dtype, shape, begin, end });
  }

  // The data section must be tiled exactly: no gaps, no overlaps, nothing after the last tensor.
  const ranges = [...tensors.values()].sort((a, b) => a.begin - b.begin || a.end - b.end);
  let cursor = 0;
  for (const t of ranges) {
    if (t.begin < cursor) throw new SafetensorsError(`tensor '${t.name}' overlaps the tensor before it`);
    if (t.begin > cursor) throw new SafetensorsError(`gap in the data section before tensor '${t.name}'`);
    cursor = t.end;
  }
  if (dataOffset + cursor !== fileLength) {
    throw new SafetensorsError(
      `data section is ${fileLength - dataOffset} bytes but the tensors cover ${cursor} (truncated or trailing bytes)`,
    );
  }
  return { dataOffset, tensors, metadata };
}

/** The first key that occurs twice in one object of `text` (valid JSON), at any depth. */
function duplicateKey(text: string): string | undefined {
  const objects: Array<Set<string> | null> = []; // null: an array
  let keyNext = false;
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (ch === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      const keys = objects.at(-1);
      if (keys && keyNext) {
        const key = JSON.parse(text.slice(i, end + 1)) as string;
        if (keys.has(key)) return key;
        keys.add(key);
        keyNext = false;
      }
      i = end;
    } else if (ch === "{") {
      objects.push(new Set());
      keyNext = true;
    } else if (ch === "[") {
      objects.push(null);
    } else if (ch === "}" || ch === "]") {
      objects.pop();
    } else if (ch === ",") {
      keyNext = objects.at(-1) != null;
    }
  }
  return undefined;
}

export function f16ToF32(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * 2 ** -14 * (frac / 1024);
  if (exp === 0x1f) return frac ? Number.NaN : sign * Number.POSITIVE_INFINITY;
  return sign * 2 ** (exp - 15) * (1 + frac / 1024);
}

const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

/** float32 → float16 bits, rounding to nearest even (overflow → ±Inf), as numpy's `astype(float16)`. */
export function f32ToF16(value: number): number {
  f32Scratch[0] = value;
  const x = u32Scratch[0]!;
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  let mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    let half = mant >> shift;
    const rem = mant & ((1 << shift) - 1);
    const mid = 1 << (shift - 1);
    if (rem > mid || (rem === mid && half & 1)) half++;
    return sign | half;
  }
  let half = (e << 10) | (mant >> 13);
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && half & 1)) half++; // a carry into the exponent rounds up correctly
  return sign | half;
}

/**
 * A tensor's values as float32: a zero-copy view for F32 data that is 4-byte aligned in memory, a converted
 * copy for F16/BF16/F64/unaligned data. Non-finite values are refused.
 */
export function readFloatTensor(file: Uint8Array, header: SafetensorsHeader, name: string): Float32Array {
  const t = header.tensors.get(name);
  if (!t) throw new SafetensorsError(`no tensor '${name}'`);
  const start = file.byteOffset + header.dataOffset + t.begin;
  const count = (t.end - t.begin) / DTYPE_BYTES[t.dtype];
  let out: Float32Array;
  if (t.dtype === "F32") {
    out =
      start % 4 === 0
        ? new Float32Array(file.buffer, start, count)
        : new Float32Array(file.slice(header.dataOffset + t.begin, header.dataOffset + t.end).buffer);
  } else if (t.dtype === "F16" || t.dtype === "BF16" || t.dtype === "F64") {
    const view = new DataView(file.buffer, start, t.end - t.begin);
    out = new Float32Array(count);
    for (let i = 0; i < count; i++) {
      out[i] =
        t.dtype === "F16"
          ? f16ToF32(view.getUint16(i * 2, true))
          : t.dtype === "BF16"
            ? new Float32Array(new Uint32Array([view.getUint16(i * 2, true) << 16]).buffer)[0]!
            : view.getFloat64(i * 8, true);
    }
  } else {
    throw new SafetensorsError(`tensor '${name}' is ${t.dtype}; a float tensor is expected`);
  }
  for (let i = 0; i < out.length; i++) {
    if (!Number.isFinite(out[i]!))
      throw new SafetensorsError(`tensor '${name}' holds a non-finite value at element ${i}`);
  }
  return out;
}

/** Writes a safetensors file (F32 tensors): for tests, the zoo's exports and fixtures. */
export function encodeSafetensors(
  tensors: Record<string, { shape: number[]; data: Float32Array }>,
  metadata?: Record<string, string>,
): Uint8Array {
  // No prototype: a tensor named "__proto__" must become a key, not replace the prototype and vanish from the JSON.
  const header: Record<string, unknown> = Object.create(null);
  if (metadata) header.__metadata__ = metadata;
  let offset = 0;
  for (const [name, t] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape: t.shape, data_offsets: [offset, offset + t.data.byteLength] };
    offset += t.data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - ((8 + json.length) % 8)) % 8); // keep the data section 8-byte aligned
  const headerBytes = new TextEncoder().encode(json);
  const out = new Uint8Array(8 + headerBytes.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(headerBytes.byteLength), true);
  out.set(headerBytes, 8);
  let at = 8 + headerBytes.byteLength;
  for (const t of Object.values(tensors)) {
    out.set(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), at);
    at += t.data.byteLength;
  }
  return out;
}
