"""Repairs an fp16 export made by sd-fixtures/full_size.py --via-fp32 (ONNX Runtime's float16 converter) so that
onnxruntime-node 1.30 opens it at graphOptimizationLevel "disabled", as the importer's check and bench/flops.ts do.

The converter turns attention's scale, `1 / sqrt(head_dim)` computed from a shape (int → Cast → Sqrt → Div by a
Constant → Cast), into fp16; ORT's CPU EP has no fp16 Sqrt/Div, its inserted casts then clash with the graph's
value_info ("Type (tensor(float)) of output arg (InsertedPrecisionFreeCast_…/Cast_3_output_0) does not match expected
type (tensor(float16))"). Higher optimisation levels fold the chain away first, which is why Python's onnxruntime
smoke run passes. The fix keeps that chain in fp32 up to its final Cast to fp16: the same values, the same graph
otherwise. Belongs in full_size.py's to_fp16 (SD-FIXTURES); here until it is.

    cd gpu-runner/sd-fixtures && .venv/bin/python ../bench/repair_fp16_scale_casts.py out/full/sd15-fp16-via-fp32
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import onnx
from onnx import numpy_helper

FLOAT, FLOAT16 = 1, 10
SHAPE_OPS = {"Slice", "Gather", "Shape", "Squeeze", "Unsqueeze", "Concat"}
CHAIN_OPS = {"Sqrt", "Div", "Mul", "Reciprocal"}


def repair(path: Path) -> int:
    model = onnx.load(str(path))
    graph = model.graph
    producer = {out: node for node in graph.node for out in node.output}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    value_info = {v.name: v for v in graph.value_info}
    chains = 0
    for node in graph.node:
        if node.op_type != "Cast" or node.attribute[0].i != FLOAT16:
            continue
        source = producer.get(node.input[0])
        if source is None or source.op_type not in SHAPE_OPS:
            continue
        if not all(c.op_type == "Sqrt" for c in consumers.get(node.output[0], [])):
            continue
        node.attribute[0].i = FLOAT
        frontier = [node.output[0]]
        while frontier:
            tensor = frontier.pop()
            if tensor in value_info:
                value_info[tensor].type.tensor_type.elem_type = FLOAT
            for c in consumers.get(tensor, []):
                if c.op_type == "Cast":
                    continue  # the chain's end: back to fp16 here
                if c.op_type not in CHAIN_OPS:
                    raise SystemExit(f"{path}: {c.op_type} {c.name} in a scale chain; not repaired")
                for name in c.input:
                    const = producer.get(name)
                    if const is not None and const.op_type == "Constant" and const.attribute[0].t.data_type == FLOAT16:
                        t = const.attribute[0].t
                        t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))
                frontier.extend(c.output)
        chains += 1
    if chains:
        data = path.with_name("model.onnx_data")
        external = data.exists()
        if external:
            data.unlink()  # loaded already; onnx appends to an existing data file
        onnx.save(
            model,
            str(path),
            save_as_external_data=external,
            all_tensors_to_one_file=True,
            location=data.name,
            size_threshold=100,
        )
    return chains


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        for path in sorted(Path(folder).glob("*/model.onnx")):
            print(f"{path}: {repair(path)} scale chains put back in fp32", flush=True)
