/**
 * Splits a graph in two at the first use of some of its inputs: `early` holds every node that does not depend on
 * them (so it can run before they exist), `late` the rest, fed the tensors `early` hands over. A ControlNet's
 * residuals enter the U-Net only after its down and mid blocks, so the U-Net's early part runs while the ControlNet
 * computes them (addons/controlnet-batch.ts). Nodes that depend on no graph input (constants and what is computed
 * from them alone) are copied into `late` where it needs them rather than handed over. Subgraphs (If) are followed
 * for the outer values they read. The tensors handed over are `early`'s outputs, typed by ONNX Runtime's own
 * inference (`handoverTypes` reads them from a session of `early`). Field numbers follow onnx/onnx.proto.
 */
import { protoFields, type ProtoField } from "@imagegen/formats/onnx-reader";
import { ProtoWriter } from "./builder.ts";
import { GraphRewriteError } from "./lora-branches.ts";

const text = new TextDecoder();
const str = (buf: Uint8Array, f: ProtoField) => text.decode(buf.subarray(f.at, f.end));

interface ParsedNode {
  field: ProtoField;
  op: string;
  inputs: string[];
  outputs: string[];
  /** Explicit inputs and the outer values its subgraphs read. */
  reads: string[];
}

/** The names a subgraph (GraphProto in buf[at, end)) reads from outside itself, nested subgraphs included. */
function outerReads(buf: Uint8Array, at: number, end: number): Set<string> {
  const produced = new Set<string>();
  const read = new Set<string>();
  for (const f of protoFields(buf, at, end)) {
    if (f.wire !== 2) continue;
    if (f.field === 5 || f.field === 11) {
      const nameField = f.field === 5 ? 8 : 1;
      for (const x of protoFields(buf, f.at, f.end))
        if (x.field === nameField && x.wire === 2) produced.add(str(buf, x));
    } else if (f.field === 1) {
      const n = parseNode(buf, f);
      for (const o of n.outputs) produced.add(o);
      for (const r of n.reads) read.add(r);
    }
  }
  return new Set([...read].filter((r) => !produced.has(r)));
}

function parseNode(buf: Uint8Array, field: ProtoField): ParsedNode {
  const inputs: string[] = [];
  const outputs: string[] = [];
  const reads = new Set<string>();
  let op = "";
  for (const x of protoFields(buf, field.at, field.end)) {
    if (x.wire !== 2) continue;
    if (x.field === 4) op = str(buf, x);
    else if (x.field === 1) inputs.push(str(buf, x));
    else if (x.field === 2) outputs.push(str(buf, x));
    else if (x.field === 5) {
      // AttributeProto: g (6) or graphs (11) hold subgraphs.
      for (const a of protoFields(buf, x.at, x.end))
        if ((a.field === 6 || a.field === 11) && a.wire === 2)
          for (const r of outerReads(buf, a.at, a.end)) reads.add(r);
    }
  }
  for (const i of inputs) if (i !== "") reads.add(i);
  return { field, op, inputs, outputs, reads: [...reads] };
}

export interface Partition {
  /** Runs without the late inputs; outputs the handed-over tensors (untyped: see `handoverTypes`). */
  early: Uint8Array;
  /** Builds the late part once the handed-over tensors' types are known. */
  late: (types: ReadonlyMap<string, { elemType: number }>) => Uint8Array;
  /** The tensors `early` hands to `late`. */
  handover: string[];
  /** Graph inputs each part reads. */
  earlyInputs: string[];
  lateInputs: string[];
}

/** Ops whose work is worth handing over rather than recomputing (everything else computed from inputs is cheap). */
const HEAVY_OPS = new Set(["MatMul", "Gemm", "Conv", "ConvTranspose", "If", "Loop", "Scan", "Attention", "Einsum"]);

/** ONNX TensorProto element types of ONNX Runtime's type names. */
export const ELEM_TYPES: Record<string, number> = {
  float32: 1,
  uint8: 2,
  int8: 3,
  int32: 6,
  int64: 7,
  bool: 9,
  float16: 10,
  float64: 11,
};

/** `model` split before the first node that depends on any of `lateInputs`. */
export function partitionByInputs(model: Uint8Array, lateInputs: readonly string[]): Partition {
  const graphField = protoFields(model).find((f) => f.field === 7 && f.wire === 2);
  if (!graphField) throw new GraphRewriteError("the model has no graph");
  const fields = protoFields(model, graphField.at, graphField.end);
  const nameOf = (f: ProtoField, nameField: number) =>
    protoFields(model, f.at, f.end).find((x) => x.field === nameField && x.wire === 2);
  const nodes: ParsedNode[] = [];
  const inputs = new Map<string, ProtoField>();
  const outputs: string[] = [];
  const initializers = new Map<string, ProtoField>();
  for (const f of fields) {
    if (f.wire !== 2) continue;
    if (f.field === 1) nodes.push(parseNode(model, f));
    else if (f.field === 11) inputs.set(str(model, nameOf(f, 1)!), f);
    else if (f.field === 12) outputs.push(str(model, nameOf(f, 1)!));
    else if (f.field === 5) initializers.set(str(model, nameOf(f, 8)!), f);
  }
  for (const name of lateInputs) if (!inputs.has(name)) throw new GraphRewriteError(`'${name}' is not a graph input`);
  // Per tensor: does it depend on a late input, on any graph input at all?
  const late = new Set<string>(lateInputs);
  const dynamic = new Set<string>(inputs.keys());
  const producer = new Map<string, ParsedNode>();
  const lateNode = new Set<ParsedNode>();
  const staticNode = new Set<ParsedNode>();
  // Cheap nodes computed from graph inputs alone (shapes, rank tests of the LoRA inputs, their If conditions):
  // recomputed where the late part needs them, instead of handed over (each handed tensor costs a round trip).
  const fromInputs = new Set<string>([...inputs.keys(), ...initializers.keys()]);
  const recomputable = new Set<ParsedNode>();
  for (const n of nodes) {
    const isLate = n.reads.some((r) => late.has(r));
    const isDynamic = n.reads.some((r) => dynamic.has(r));
    const cheap = !HEAVY_OPS.has(n.op) && n.reads.every((r) => fromInputs.has(r));
    for (const o of n.outputs) {
      producer.set(o, n);
      if (isLate) late.add(o);
      if (isDynamic) dynamic.add(o);
      if (cheap) fromInputs.add(o);
    }
    if (isLate) lateNode.add(n);
    else if (!isDynamic) staticNode.add(n);
    else if (cheap) recomputable.add(n);
  }
  if (lateNode.size === 0) throw new GraphRewriteError("no node reads the late inputs");
  /** The nodes (in graph order) needed for `targets`, expanding only through `allowed` producers. */
  const closure = (targets: Iterable<string>, allowed: (n: ParsedNode) => boolean): ParsedNode[] => {
    const need = new Set<ParsedNode>();
    const stack = [...targets];
    while (stack.length) {
      const n = producer.get(stack.pop()!);
      if (!n || need.has(n) || !allowed(n)) continue;
      need.add(n);
      stack.push(...n.reads);
    }
    return nodes.filter((n) => need.has(n));
  };
  const lateNodes = closure(outputs, (n) => lateNode.has(n) || staticNode.has(n) || recomputable.has(n));
  const lateProduced = new Set(lateNodes.flatMap((n) => n.outputs));
  const handover = [
    ...new Set(
      lateNodes
        .flatMap((n) => n.reads)
        .filter((r) => !lateProduced.has(r) && producer.has(r) && !lateNode.has(producer.get(r)!)),
    ),
  ];
  const earlyOutputs = outputs.filter((o) => !late.has(o));
  const earlyNodes = closure([...handover, ...earlyOutputs], (n) => !lateNode.has(n));
  const readsOf = (list: ParsedNode[]) => new Set(list.flatMap((n) => n.reads));
  const earlyReads = readsOf(earlyNodes);
  const lateReads = readsOf(lateNodes);

  const write = (
    list: ParsedNode[],
    reads: Set<string>,
    extraInputs: (g: ProtoWriter) => void,
    graphOutputs: (g: ProtoWriter) => void,
  ): Uint8Array => {
    const w = new ProtoWriter();
    for (const top of protoFields(model)) {
      if (top !== graphField && !(top.field === 7 && top.wire === 2)) {
        w.raw(model.subarray(top.start, top.end));
        continue;
      }
      w.message(7, (g) => {
        for (const n of list) g.raw(model.subarray(n.field.start, n.field.end));
        for (const f of fields) if (f.field === 2) g.raw(model.subarray(f.start, f.end)); // graph name
        for (const [name, f] of initializers) if (reads.has(name)) g.raw(model.subarray(f.start, f.end));
        for (const [name, f] of inputs)
          if (reads.has(name) && !initializers.has(name)) g.raw(model.subarray(f.start, f.end));
        extraInputs(g);
        graphOutputs(g);
      });
    }
    return w.finish();
  };
  const outputField = new Map(
    fields.filter((f) => f.field === 12 && f.wire === 2).map((f) => [str(model, nameOf(f, 1)!), f]),
  );
  const early = write(
    earlyNodes,
    earlyReads,
    () => {},
    (g) => {
      for (const o of earlyOutputs) g.raw(model.subarray(outputField.get(o)!.start, outputField.get(o)!.end));
      for (const h of handover) g.message(12, (v) => v.string(1, h));
    },
  );
  const lateModel = (types: ReadonlyMap<string, { elemType: number }>) =>
    write(
      lateNodes,
      lateReads,
      (g) => {
        for (const h of handover) {
          const t = types.get(h);
          if (!t) throw new GraphRewriteError(`no type for the handed-over tensor '${h}'`);
          // ValueInfoProto { name 1, type 2: TypeProto { tensor_type 1: { elem_type 1 } } } (shape left open).
          g.message(11, (v) => v.string(1, h).message(2, (tp) => tp.message(1, (tt) => tt.int(1, t.elemType))));
        }
      },
      (g) => {
        for (const o of outputs.filter((x) => late.has(x)))
          g.raw(model.subarray(outputField.get(o)!.start, outputField.get(o)!.end));
      },
    );
  return {
    early,
    late: lateModel,
    handover,
    earlyInputs: [...inputs.keys()].filter((n) => earlyReads.has(n) && !initializers.has(n)),
    lateInputs: [...inputs.keys()].filter((n) => lateReads.has(n) && !initializers.has(n)),
  };
}
