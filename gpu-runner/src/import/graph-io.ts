/**
 * What an exported ONNX graph takes and gives, read from the graph itself: names, dtypes and shapes (symbolic axes
 * keep their names). ONNX Runtime reads the file, so external data (`model.onnx_data` beside `model.onnx`) is
 * resolved exactly as serving will resolve it; the session is opened without optimisation and released at once.
 */
import * as ort from "onnxruntime-node";
import type { TensorSpec } from "@imagegen/formats/manifest";

export interface GraphIo {
  inputs: TensorSpec[];
  outputs: TensorSpec[];
}

const DTYPES = new Set<string>(["float32", "float16", "int64", "int32"]);

function specsOf(where: string, list: readonly ort.InferenceSession.ValueMetadata[], problems: string[]): TensorSpec[] {
  return list.map((m) => {
    if (!m.isTensor) {
      problems.push(`${where} "${m.name}" is not a tensor`);
      return { name: m.name, dtype: "float32", shape: [] };
    }
    if (!DTYPES.has(m.type)) problems.push(`${where} "${m.name}" has dtype ${m.type}, which the runner does not feed`);
    // ORT reports an unnamed dynamic axis as -1: name it after its position so the manifest stays symbolic.
    const shape = m.shape.map((d, axis) => (typeof d === "number" && d < 0 ? `${m.name}_${axis}` : d));
    return { name: m.name, dtype: m.type as TensorSpec["dtype"], shape };
  });
}

/** The graph's I/O, or the problems that make it unusable (an unloadable file is one of them). */
export async function readGraphIo(path: string, where: string): Promise<{ io?: GraphIo; problems: string[] }> {
  let session: ort.InferenceSession;
  try {
    session = await ort.InferenceSession.create(path, { graphOptimizationLevel: "disabled", logSeverityLevel: 4 });
  } catch (err) {
    return { problems: [`${where}: ONNX Runtime cannot load it: ${(err as Error).message.split("\n")[0]}`] };
  }
  try {
    const problems: string[] = [];
    const io = {
      inputs: specsOf(`${where} input`, session.inputMetadata, problems),
      outputs: specsOf(`${where} output`, session.outputMetadata, problems),
    };
    return { io, problems };
  } finally {
    await session.release();
  }
}
