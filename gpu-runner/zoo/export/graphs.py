"""ONNX graphs from PyTorch modules: export (opset 17), the dynamic-weight convolution LoRA branches, compaction
(topological order, unused initializers dropped), fp16 storage of large initializers, and reading a graph's I/O."""

from __future__ import annotations

import os

import numpy as np
import torch

OPSET = 17


FP16_STORAGE = False  # set by export_trained: large initializers stored as fp16 + Cast


ONNX_DT = {1: "float32", 10: "float16", 7: "int64", 6: "int32"}


class BundleMismatch(Exception):
    pass


def example(spec, batch, rank, gen):
    out = []
    for name, dt, shape in spec:
        dims = []
        for d in shape:
            if d == "batch":
                dims.append(batch)
            elif isinstance(d, str) and d.startswith("rank"):
                dims.append(rank)
            else:
                dims.append(d)
        if dt == "int64":
            out.append(torch.randint(0, 20, dims, generator=gen))
        elif name == "timestep":
            out.append(torch.randint(0, 1000, dims, generator=gen).float())
        elif name.startswith("lora_"):
            out.append(torch.randn(dims, generator=gen) * 0.2)
        elif name.endswith("residual"):
            out.append(torch.randn(dims, generator=gen) * 0.1)
        else:
            out.append(torch.randn(dims, generator=gen))
    return out


_dynamic_conv_registered = False


def _register_dynamic_conv():
    """torch 1.13 refuses to export a convolution whose weight shape it cannot see (a scripted LoRA branch's
    kernel, shaped at run time from a graph input: models.conv_lora_branch). ONNX Conv infers kernel_shape from W when
    the attribute is absent, so such a convolution is written without it; every other one as torch writes it
    (F.conv2d is aten::conv2d here)."""
    global _dynamic_conv_registered
    if _dynamic_conv_registered:
        return
    from torch.onnx import symbolic_helper as sh
    from torch.onnx import symbolic_opset9 as s9

    def conv2d(g, input, weight, bias, stride, padding, dilation, groups):
        sizes = sh._get_tensor_sizes(weight)
        if sizes is not None and len(sizes) == 4 and all(s is not None for s in sizes[2:]):
            return s9.conv2d(g, input, weight, bias, stride, padding, dilation, groups)
        args = [input, weight] + ([] if sh._is_none(bias) else [bias])
        pad = sh._parse_arg(padding, "is")
        return g.op(
            "Conv",
            *args,
            strides_i=sh._parse_arg(stride, "is"),
            pads_i=pad + pad,
            dilations_i=sh._parse_arg(dilation, "is"),
            group_i=sh._parse_arg(groups, "i"),
        )

    torch.onnx.register_custom_op_symbolic("aten::conv2d", conv2d, OPSET)
    _dynamic_conv_registered = True


def export_onnx(module, spec_in, spec_out, path, gen):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    args = example(spec_in, 2, 3, gen)
    dyn = {}
    for name, _, shape in spec_in + spec_out:
        axes = {i: d for i, d in enumerate(shape) if isinstance(d, str)}
        if axes:
            dyn[name] = axes
    module.eval()
    _register_dynamic_conv()
    with torch.no_grad():
        try:
            torch.onnx.export(
                module,
                tuple(args),
                path,
                opset_version=OPSET,
                input_names=[n for n, _, _ in spec_in],
                output_names=[n for n, _, _ in spec_out],
                dynamic_axes=dyn,
                do_constant_folding=True,
            )
        except torch.onnx.errors.CheckerError:
            # torch 1.13 places an If (a scripted LoRA branch, models.conv_lora_branch) before the nodes whose values
            # its branches capture; the file is written all the same, and compact_onnx sorts the graph.
            if not os.path.exists(path):
                raise
    compact_onnx(path)
    if FP16_STORAGE:
        fp16_storage(path)


def _subgraphs(node):
    for a in node.attribute:
        if a.HasField("g"):
            yield a.g
        yield from a.graphs


def _walk(graph):
    """Every node of `graph`, with those of its subgraphs (an If's branches)."""
    for n in graph.node:
        yield n
        for sg in _subgraphs(n):
            yield from _walk(sg)


def _toposort(graph):
    """Orders the top-level nodes so that each comes after what it reads, counting the outer values that its
    subgraphs capture (stable: the exported order wherever it is already valid)."""
    produced_by = {o: i for i, n in enumerate(graph.node) for o in n.output if o}
    deps = []
    for n in graph.node:
        names = set(n.input)
        for sg in _subgraphs(n):
            for m in _walk(sg):
                names.update(m.input)
            names.update(o.name for o in sg.output)
        deps.append({produced_by[x] for x in names if x in produced_by})
    order, done = [], set()
    pending = list(range(len(graph.node)))
    while pending:
        rest = []
        for i in pending:
            if deps[i] <= done:
                order.append(i)
                done.add(i)
            else:
                rest.append(i)
        if len(rest) == len(pending):
            raise BundleMismatch("ONNX graph has a cycle")
        pending = rest
    nodes = [graph.node[i] for i in order]
    del graph.node[:]
    graph.node.extend(nodes)


def compact_onnx(path):
    """Shorten internal node and value names (not graph inputs/outputs/initializers): the files are committed.
    Subgraphs (If branches) are renamed with the graph, and the top level is sorted topologically."""
    import onnx

    m = onnx.load(path)
    g = m.graph
    _toposort(g)
    keep = {v.name for v in g.input} | {v.name for v in g.output} | {i.name for i in g.initializer}
    ren = {}
    for i, n in enumerate(_walk(g)):
        n.name = f"n{i}"
        n.doc_string = ""
        for o in n.output:
            if o and o not in keep and o not in ren:
                ren[o] = f"v{len(ren)}"

    def rename(graph):
        for n in graph.node:
            for j, x in enumerate(n.input):
                if x in ren:
                    n.input[j] = ren[x]
            for j, x in enumerate(n.output):
                if x in ren:
                    n.output[j] = ren[x]
            for sg in _subgraphs(n):
                rename(sg)
        for vi in list(graph.value_info) + (list(graph.output) if graph is not g else []):
            if vi.name in ren:
                vi.name = ren[vi.name]

    rename(g)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def tensor_specs(spec):
    return [dict(name=n, dtype=dt, shape=list(shape)) for n, dt, shape in spec]


def onnx_io(path):
    import onnx

    m = onnx.load(path)
    init = {i.name for i in m.graph.initializer}

    def conv(vi):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
        return dict(name=vi.name, dtype=ONNX_DT.get(tt.elem_type, f"onnx:{tt.elem_type}"), shape=dims)

    return ([conv(v) for v in m.graph.input if v.name not in init], [conv(v) for v in m.graph.output])


def onnx_initializers(bundle_dir, comp):
    import onnx

    path = os.path.join(bundle_dir, comp["path"])
    return {i.name for i in onnx.load(path).graph.initializer} if os.path.exists(path) else set()


def merge_weight_names(onnx_path, unet, paths=None):
    """Each LoRA target's weight initializer in the exported graph (of the targets in `paths`, default all), found
    by value (node names are compacted): a Linear on tokens exports as MatMul with Wᵀ ("in_out"); as Gemm it keeps
    W ("out_in"), as does a Conv. With fp16 storage the float16 initializer is the one named."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(onnx_path).graph.initializer}
    mods = dict(unet.named_modules())
    out = []
    for t in unet.lora_target_info():
        if paths is not None and t["path"] not in paths:
            continue
        w = mods[t["path"]].weight.detach().float().numpy()
        hit = [
            (n, "in_out") for n, a in inits.items() if w.ndim == 2 and a.shape == w.T.shape and np.array_equal(a, w.T)
        ]
        hit += [(n, "out_in") for n, a in inits.items() if a.shape == w.shape and np.array_equal(a, w)]
        if len(hit) != 1:
            raise BundleMismatch(f"merge mode: {len(hit)} initializers hold the weight of {t['path']} (need exactly 1)")
        out.append(hit[0])
    return out


def fp16_storage(path, min_elems=256):
    """Store large float32 initializers as float16 + a Cast to float32 (onnxruntime folds the casts when it
    loads the session, so the graph still computes in float32). Lossless for weights that are already
    fp16-representable (the committed checkpoints keep fp16 weights); roughly halves the committed size."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.load(path)
    g = m.graph
    new_init, casts = [], []
    for init in g.initializer:
        if init.data_type == onnx.TensorProto.FLOAT and int(np.prod(init.dims)) >= min_elems:
            a = numpy_helper.to_array(init)
            h = a.astype(np.float16)
            if not np.array_equal(h.astype(np.float32), a):
                new_init.append(init)  # not exactly representable: keep float32
                continue
            new_init.append(numpy_helper.from_array(h, init.name + "_fp16"))
            casts.append(
                helper.make_node(
                    "Cast", [init.name + "_fp16"], [init.name], to=onnx.TensorProto.FLOAT, name=f"cast_{len(casts)}"
                )
            )
        else:
            new_init.append(init)
    del g.initializer[:]
    g.initializer.extend(new_init)
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(casts + nodes)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def _round_fp16(module):
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(p.half().float())
    return module
