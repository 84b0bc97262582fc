"""ONNX export of `tiny-shapes` bundles (SD ONNX layout + manifest.json) and add-ons, into gpu-runner/models/.

    cd gpu-runner && /usr/bin/python3 -m zoo.export random     # the tiny randomly initialised test bundles
    cd gpu-runner && /usr/bin/python3 -m zoo.export trained    # bundles from whatever stages have finished

Every bundle is written to <dir>.tmp first and moved into place only when
  * manifest.json validates against formats/manifest.schema.json (jsonschema),
  * every ONNX file's real graph inputs/outputs (names, dtypes, ranks, fixed dims) match the manifest,
  * head -> deep -> tail equals the whole U-Net (PyTorch, and onnxruntime-node when it is available),
  * the ONNX files agree with PyTorch (onnxruntime-node through tools/ort_run.cjs, when available).
Otherwise it raises and leaves the previous bundle untouched.
"""
