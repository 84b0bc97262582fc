/**
 * A minimal ONNX model writer: enough protobuf to build small graphs in memory, so that the bench can measure
 * a large MatMul and the tests can build bundles (including ones that lie about their tensors) without Python.
 * Field numbers follow onnx/onnx.proto (ModelProto, GraphProto, NodeProto, TensorProto, ValueInfoProto).
 *
 * @example
 * const model = buildModel({
 *   inputs: [{ name: "a", dtype: "float32", shape: ["n", 4] }],
 *   outputs: [{ name: "b", dtype: "float32", shape: ["n", 4] }],
 *   nodes: [{ op: "Relu", inputs: ["a"], outputs: ["b"] }],
 * });
 * const session = await InferenceSession.create(model);
 */

export type OnnxDtype = "float32" | "float16" | "int64" | "int32";
export type OnnxDim = number | string;

export interface ValueInfo {
  name: string;
  dtype: OnnxDtype;
  shape: readonly OnnxDim[];
}

export type AttributeValue = number | readonly number[] | string | { float: number } | { floats: readonly number[] };

export interface NodeSpec {
  op: string;
  inputs: readonly string[];
  outputs: readonly string[];
  attributes?: Record<string, AttributeValue>;
}

export interface Initializer {
  name: string;
  dims: readonly number[];
  /** A Uint16Array holds float16 bits. */
  data: Float32Array | BigInt64Array | Uint16Array;
}

export interface GraphSpec {
  inputs: readonly ValueInfo[];
  outputs: readonly ValueInfo[];
  nodes: readonly NodeSpec[];
  initializers?: readonly Initializer[];
  opset?: number;
}

const ELEM_TYPE: Record<OnnxDtype, number> = { float32: 1, int32: 6, int64: 7, float16: 10 };

/** Protobuf wire-format writer (varints, length-delimited fields, fixed32 floats). */
export class ProtoWriter {
  private readonly parts: Uint8Array[] = [];

  private varint(value: bigint | number): void {
    let v = BigInt.asUintN(64, BigInt(value));
    const bytes: number[] = [];
    do {
      let byte = Number(v & 0x7fn);
      v >>= 7n;
      if (v !== 0n) byte |= 0x80;
      bytes.push(byte);
    } while (v !== 0n);
    this.parts.push(Uint8Array.from(bytes));
  }

  private key(field: number, wire: number): void {
    this.varint((field << 3) | wire);
  }

  int(field: number, value: number | bigint): this {
    this.key(field, 0);
    this.varint(value);
    return this;
  }

  float(field: number, value: number): this {
    this.key(field, 5);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.parts.push(b);
    return this;
  }

  bytes(field: number, value: Uint8Array): this {
    this.key(field, 2);
    this.varint(value.length);
    this.parts.push(value);
    return this;
  }

  /** Fields that are already encoded (keys and values), copied as they are. */
  raw(encoded: Uint8Array): this {
    this.parts.push(encoded);
    return this;
  }

  string(field: number, value: string): this {
    return this.bytes(field, new TextEncoder().encode(value));
  }

  message(field: number, build: (w: ProtoWriter) => void): this {
    const inner = new ProtoWriter();
    build(inner);
    return this.bytes(field, inner.finish());
  }

  finish(): Uint8Array {
    const total = this.parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(total);
    let offset = 0;
    for (const p of this.parts) {
      out.set(p, offset);
      offset += p.length;
    }
    return out;
  }
}

export function writeValueInfo(w: ProtoWriter, v: ValueInfo): void {
  w.string(1, v.name).message(2, (type) =>
    type.message(1, (tensor) => {
      tensor.int(1, ELEM_TYPE[v.dtype]).message(2, (shape) => {
        for (const d of v.shape) {
          shape.message(1, (dim) => (typeof d === "number" ? dim.int(1, d) : dim.string(2, d)));
        }
      });
    }),
  );
}

export function writeAttribute(w: ProtoWriter, name: string, value: AttributeValue): void {
  // AttributeProto.type: FLOAT=1, INT=2, STRING=3, FLOATS=6, INTS=7.
  w.string(1, name);
  if (typeof value === "number") w.int(3, value).int(20, 2);
  else if (typeof value === "string") w.string(4, value).int(20, 3);
  else if ("float" in value) w.float(2, value.float).int(20, 1);
  else if ("floats" in value) {
    for (const f of value.floats) w.float(7, f);
    w.int(20, 6);
  } else {
    for (const i of value) w.int(8, i);
    w.int(20, 7);
  }
}

/** A TensorProto's fields. */
export function writeInitializer(t: ProtoWriter, init: Initializer): void {
  for (const d of init.dims) t.int(1, d);
  t.int(
    2,
    init.data instanceof Float32Array
      ? ELEM_TYPE.float32
      : init.data instanceof Uint16Array
        ? ELEM_TYPE.float16
        : ELEM_TYPE.int64,
  );
  t.string(8, init.name);
  t.bytes(9, new Uint8Array(init.data.buffer, init.data.byteOffset, init.data.byteLength));
}

/** A NodeProto's fields. */
export function writeNode(n: ProtoWriter, node: NodeSpec, name: string): void {
  for (const input of node.inputs) n.string(1, input);
  for (const output of node.outputs) n.string(2, output);
  n.string(3, name).string(4, node.op);
  for (const [key, value] of Object.entries(node.attributes ?? {})) n.message(5, (a) => writeAttribute(a, key, value));
}

/** Serialises a graph into an ONNX ModelProto (IR version 8, default opset 17). */
export function buildModel(graph: GraphSpec): Uint8Array {
  const w = new ProtoWriter();
  w.int(1, 8).string(2, "imagegen-onnx-builder");
  w.message(7, (g) => {
    graph.nodes.forEach((node, i) => {
      g.message(1, (n) => writeNode(n, node, `${node.op}_${i}`));
    });
    g.string(2, "graph");
    for (const init of graph.initializers ?? []) {
      g.message(5, (t) => writeInitializer(t, init));
    }
    for (const input of graph.inputs) g.message(11, (v) => writeValueInfo(v, input));
    for (const output of graph.outputs) g.message(12, (v) => writeValueInfo(v, output));
  });
  w.message(8, (o) => o.string(1, "").int(2, graph.opset ?? 17));
  return w.finish();
}
