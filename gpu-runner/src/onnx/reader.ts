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

class ProtoReader {
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
      if (byte === undefined) throw new Error("onnx: truncated varint");
      result += (byte & 0x7f) * shift;
      if ((byte & 0x80) === 0) return result;
      shift *= 128;
    }
  }

  /** Negative int64 values arrive as 10-byte varints; dims and attributes here are small and ≥ −1. */
  signedVarint(): number {
    const v = this.varint();
    return v >= 2 ** 63 ? v - 2 ** 64 : v;
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
    }
    else if (wire === 5) this.pos += 4;
    else throw new Error(`onnx: unsupported wire type ${wire}`);
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
