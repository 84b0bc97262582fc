"""The `tiny-shapes` model zoo: procedural data, training stages, samplers, ONNX export and the evaluator.

Run from gpu-runner/ with Debian's Python: `/usr/bin/python3 -m zoo.train <stage>`, `-m zoo.export <target>`,
`-m zoo.evaluate <what>`, `-m pytest zoo/tests`. See README.md."""
