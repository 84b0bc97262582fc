/**
 * A minimal ONNX graph reader: node types, their tensor names and integer attributes, and initializer shapes.
 * Enough to count a graph's FLOPs with the shapes ONNX Runtime reports, without a protobuf dependency.
 * Field numbers follow onnx/onnx.proto.
 */

export interface OnnxNode {
  name: string;
  opType: string;
  inputs: string[];
  outputs: string[];
  /** Integer and integer-list attributes (group, kernel_shape, strides, ...). */
  ints: Record<string, number | number[]>;
}

export interface OnnxGraph {
  nodes: OnnxNode[];
  /** Initializer name → dims. */
  initializers: Map<string, number[]>;
}

/** Every reader here refuses a damaged or hostile model with this error, never a TypeError or RangeError. */
export class OnnxError extends Error {
  override readonly name = "OnnxError";
}

export class ProtoReader {
  pos = 0;
  private readonly buf: Uint8Array;
  private readonly end: number;

  constructor(buf: Uint8Array, end = buf.length) {
    this.buf = buf;
    this.end = end;
  }

  done(): boolean {
    return this.pos >= this.end;
  }

  varint(): number {
    let result = 0;
    let shift = 1;
    for (;;) {
      const byte = this.buf[this.pos++];
      if (byte === undefined) throw new OnnxError("onnx: truncated varint");
      result += (byte & 0x7f) * shift;
      if ((byte & 0x80) === 0) return result;
      shift *= 128;
    }
  }

  /**
   * Negative int64 values arrive as 10-byte two's-complement varints, past a double's exact range (summed as a
   * double, −1 rounds to 2^64 and reads as 0): those are decoded again with BigInt.
   */
  signedVarint(): number {
    const start = this.pos;
    const v = this.varint();
    if (v < 2 ** 53) return v;
    let big = 0n;
    for (let i = start; i < this.pos; i++) big |= BigInt(this.buf[i]! & 0x7f) << BigInt(7 * (i - start));
    return Number(BigInt.asIntN(64, big));
  }

  /** Returns [field, wireType] of the next key. */
  key(): [number, number] {
    const k = this.varint();
    return [Math.floor(k / 8), k % 8];
  }

  bytes(): Uint8Array {
    const len = this.varint();
    const out = this.buf.subarray(this.pos, this.pos + len);
    this.pos += len;
    return out;
  }

  string(): string {
    return new TextDecoder().decode(this.bytes());
  }

  skip(wire: number): void {
    if (wire === 0) this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) {
      const len = this.varint(); // read first: `pos += varint()` would add to the stale position
      this.pos += len;
    } else if (wire === 5) this.pos += 4;
    else throw new OnnxError(`onnx: unsupported wire type ${wire}`);
  }

  /** A repeated int64 field, packed or not. */
  ints(wire: number, into: number[]): void {
    if (wire === 2) {
      const sub = this.sub();
      while (!sub.done()) into.push(sub.signedVarint());
    } else into.push(this.signedVarint());
  }

  sub(): ProtoReader {
    const len = this.varint();
    const r = new ProtoReader(this.buf, this.pos + len);
    r.pos = this.pos;
    this.pos += len;
    return r;
  }
}

/** One field of a message: its number and wire type, where its key starts, where its value starts and ends. */
export interface ProtoField {
  field: number;
  wire: number;
  /** Offset of the key (the field as encoded is buf[start, end)). */
  start: number;
  /** Offset of the value (a length-delimited field's payload, a varint's or a fixed field's bytes). */
  at: number;
  end: number;
  /** A varint field's value. */
  value: number;
}

/** The fields of the message in buf[start, end), in order. */
export function protoFields(buf: Uint8Array, start = 0, end = buf.length): ProtoField[] {
  const r = new ProtoReader(buf, end);
  r.pos = start;
  const out: ProtoField[] = [];
  while (!r.done()) {
    const begin = r.pos;
    const [field, wire] = r.key();
    let at = r.pos;
    let value = 0;
    if (wire === 2) {
      const len = r.varint();
      at = r.pos;
      r.pos += len;
    } else if (wire === 0) value = r.varint();
    else r.skip(wire);
    if (r.pos > end) throw new OnnxError("onnx: truncated field");
    out.push({ field, wire, start: begin, at, end: r.pos, value });
  }
  return out;
}

function readAttribute(r: ProtoReader): [string, number | number[] | null] {
  let name = "";
  let i: number | null = null;
  const ints: number[] = [];
  while (!r.done()) {
    const [field, wire] = r.key();
    if (field === 1) name = r.string();
    else if (field === 3) i = r.signedVarint();
    else if (field === 8) r.ints(wire, ints);
    else r.skip(wire);
  }
  return [name, ints.length > 0 ? ints : i];
}

function readNode(r: ProtoReader): OnnxNode {
  const node: OnnxNode = { name: "", opType: "", inputs: [], outputs: [], ints: {} };
  while (!r.done()) {
    const [field, wire] = r.key();
    if (field === 1) node.inputs.push(r.string());
    else if (field === 2) node.outputs.push(r.string());
    else if (field === 3) node.name = r.string();
    else if (field === 4) node.opType = r.string();
    else if (field === 5) {
      const [name, value] = readAttribute(r.sub());
      if (value !== null) node.ints[name] = value;
    } else r.skip(wire);
  }
  return node;
}

function readTensorDims(r: ProtoReader): [string, number[]] {
  let name = "";
  const dims: number[] = [];
  while (!r.done()) {
    const [field, wire] = r.key();
    if (field === 1) r.ints(wire, dims);
    else if (field === 8) name = r.string();
    else r.skip(wire);
  }
  return [name, dims];
}

/** Reads the main graph's nodes and initializer shapes (subgraphs of If/Loop are not visited). */
export function readOnnxGraph(model: Uint8Array): OnnxGraph {
  const graph: OnnxGraph = { nodes: [], initializers: new Map() };
  const top = new ProtoReader(model);
  while (!top.done()) {
    const [field, wire] = top.key();
    if (field !== 7) {
      top.skip(wire);
      continue;
    }
    const g = top.sub();
    while (!g.done()) {
      const [gf, gw] = g.key();
      if (gf === 1) graph.nodes.push(readNode(g.sub()));
      else if (gf === 5) {
        const [name, dims] = readTensorDims(g.sub());
        graph.initializers.set(name, dims);
      } else g.skip(gw);
    }
  }
  return graph;
}

/** TensorProto.DataType values this project reads. */
export const ONNX_FLOAT = 1;
export const ONNX_FLOAT16 = 10;

/** Where an initializer's values are: in the model bytes, or in an external data file beside the model. */
export interface LocatedTensor {
  dims: number[];
  dataType: number;
  /** In the model: raw_data bytes, or (float32 only) the packed float_data field. */
  offset: number;
  byteLength: number;
  /** Optimum writes tensors over ~100 bytes of a model past 2 GB to `model.onnx_data`: offset/byteLength are there. */
  external?: { location: string };
  /** The TensorProto's field in the graph, [start, end) of the model bytes. */
  start: number;
  end: number;
}

/**
 * The main graph's float32 and float16 initializers by name, with where their values lie: a merge patches them in
 * place. float16 values outside raw_data (one per int32_data varint) are not located: nothing merges into those.
 */
export function locateInitializers(model: Uint8Array): Map<string, LocatedTensor> {
  const out = new Map<string, LocatedTensor>();
  const text = new TextDecoder();
  for (const g of protoFields(model)) {
    if (g.field !== 7 || g.wire !== 2) continue; // ModelProto.graph
    for (const f of protoFields(model, g.at, g.end)) {
      if (f.field !== 5 || f.wire !== 2) continue; // GraphProto.initializer
      let name = "";
      const dims: number[] = [];
      let dataType = 0;
      let data: { offset: number; byteLength: number; raw: boolean } | undefined;
      let externalLocation = false;
      const ext: Record<string, string> = {};
      for (const t of protoFields(model, f.at, f.end)) {
        if (t.field === 8) name = text.decode(model.subarray(t.at, t.end));
        else if (t.field === 1 && t.wire === 0) dims.push(t.value);
        else if (t.field === 1 && t.wire === 2) {
          const r = new ProtoReader(model, t.end);
          r.pos = t.at;
          r.ints(2, dims);
        } else if (t.field === 2) dataType = t.value;
        // raw_data (9), or float32's packed float_data (4).
        else if ((t.field === 9 || t.field === 4) && t.wire === 2)
          data = { offset: t.at, byteLength: t.end - t.at, raw: t.field === 9 };
        else if (t.field === 14)
          externalLocation = t.value === 1; // data_location EXTERNAL
        else if (t.field === 13 && t.wire === 2) {
          // external_data: StringStringEntryProto {key 1, value 2}
          let key = "";
          let value = "";
          for (const e of protoFields(model, t.at, t.end)) {
            if (e.field === 1) key = text.decode(model.subarray(e.at, e.end));
            else if (e.field === 2) value = text.decode(model.subarray(e.at, e.end));
          }
          ext[key] = value;
        }
      }
      if (dataType !== ONNX_FLOAT && dataType !== ONNX_FLOAT16) continue;
      if (externalLocation && ext.location) {
        const count = dims.reduce((a, b) => a * b, 1);
        const byteLength = ext.length !== undefined ? Number(ext.length) : count * (dataType === ONNX_FLOAT ? 4 : 2);
        out.set(name, {
          dims,
          dataType,
          offset: Number(ext.offset ?? 0),
          byteLength,
          external: { location: ext.location },
          start: f.start,
          end: f.end,
        });
      } else if (data && (dataType === ONNX_FLOAT || data.raw)) {
        out.set(name, { dims, dataType, offset: data.offset, byteLength: data.byteLength, start: f.start, end: f.end });
      }
    }
  }
  return out;
}

/** Reads `length` bytes at `offset` of a model that is not in memory (an object in storage, a slice of an archive). */
export type ReadAt = (offset: number, length: number) => Promise<Uint8Array>;

/** The main graph's real inputs (initializers excluded, as ONNX Runtime lists them) and outputs, in order. */
export interface OnnxIo {
  inputs: string[];
  outputs: string[];
}

/** Longest name this reader accepts: tensor names are short; a huge length means a damaged file. */
const MAX_NAME = 64 * 1024;

/** Protobuf over a ReadAt: reads through a window, and seeks past skipped fields without reading them. */
class WindowedReader {
  pos = 0;
  private buf: Uint8Array = new Uint8Array(0);
  private bufAt = 0;
  private readonly read: ReadAt;
  private readonly size: number;
  private readonly window: number;

  constructor(read: ReadAt, size: number, window: number) {
    this.read = read;
    this.size = size;
    this.window = window;
  }

  /** Makes [pos, pos + n) available in `buf`. */
  private async ensure(n: number): Promise<void> {
    if (n <= 0) return;
    if (this.pos + n > this.size) throw new OnnxError(`truncated at byte ${this.pos}`);
    if (this.pos >= this.bufAt && this.pos + n <= this.bufAt + this.buf.byteLength) return;
    const length = Math.min(Math.max(n, this.window), this.size - this.pos);
    const got = await this.read(this.pos, length);
    if (got.byteLength < n) throw new OnnxError(`truncated at byte ${this.pos}`);
    this.buf = got;
    this.bufAt = this.pos;
  }

  async varint(): Promise<number> {
    await this.ensure(Math.min(10, this.size - this.pos));
    let result = 0;
    let shift = 1;
    for (;;) {
      const byte = this.buf[this.pos - this.bufAt];
      if (byte === undefined) throw new OnnxError(`truncated varint at byte ${this.pos}`);
      this.pos++;
      result += (byte & 0x7f) * shift;
      if ((byte & 0x80) === 0) return result;
      shift *= 128;
    }
  }

  async key(): Promise<[number, number]> {
    const k = await this.varint();
    return [Math.floor(k / 8), k % 8];
  }

  /** The end of the length-delimited field that starts here, checked against its container's end. */
  async end(limit: number): Promise<number> {
    const length = await this.varint(); // before reading pos: `pos + await varint()` would add to the stale position
    const end = this.pos + length;
    if (end > limit) throw new OnnxError(`field at byte ${this.pos} runs past its message`);
    return end;
  }

  async string(limit: number): Promise<string> {
    const end = await this.end(limit);
    if (end - this.pos > MAX_NAME) throw new OnnxError(`name at byte ${this.pos} is ${end - this.pos} bytes long`);
    await this.ensure(end - this.pos);
    const s = new TextDecoder().decode(this.buf.subarray(this.pos - this.bufAt, end - this.bufAt));
    this.pos = end;
    return s;
  }

  async skip(wire: number, limit: number): Promise<void> {
    if (wire === 0) await this.varint();
    else if (wire === 1) this.pos += 8;
    else if (wire === 2) this.pos = await this.end(limit);
    else if (wire === 5) this.pos += 4;
    else throw new OnnxError(`unsupported wire type ${wire} at byte ${this.pos}`);
    if (this.pos > limit) throw new OnnxError(`truncated at byte ${limit}`);
  }

  /** The string field `nameField` of the message that starts here (ValueInfoProto 1, TensorProto 8), skipping the rest. */
  async nameOf(nameField: number, limit: number): Promise<string> {
    const end = await this.end(limit);
    let name = "";
    while (this.pos < end) {
      const [field, wire] = await this.key();
      if (field === nameField && wire === 2) name = await this.string(end);
      else await this.skip(wire, end);
    }
    return name;
  }
}

/**
 * Reads the main graph's input and output names of a model of `size` bytes through `read`, fetching `window` bytes
 * at a time and seeking past nodes' contents and initializers' data: a few reads even for a model of hundreds of MB.
 */
export async function readOnnxIo(read: ReadAt, size: number, window = 256 * 1024): Promise<OnnxIo> {
  const r = new WindowedReader(read, size, window);
  const inputs: string[] = [];
  const outputs: string[] = [];
  const initializers = new Set<string>();
  let graphs = 0;
  while (r.pos < size) {
    const [field, wire] = await r.key();
    if (field !== 7 || wire !== 2) {
      await r.skip(wire, size);
      continue;
    }
    graphs++;
    const end = await r.end(size);
    while (r.pos < end) {
      const [gf, gw] = await r.key();
      if (gf === 5 && gw === 2) initializers.add(await r.nameOf(8, end));
      else if (gf === 11 && gw === 2) inputs.push(await r.nameOf(1, end));
      else if (gf === 12 && gw === 2) outputs.push(await r.nameOf(1, end));
      else await r.skip(gw, end);
    }
  }
  if (graphs === 0) throw new OnnxError("no graph (not an ONNX model)");
  return { inputs: inputs.filter((n) => !initializers.has(n)), outputs };
}
