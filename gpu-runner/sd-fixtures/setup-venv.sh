#!/usr/bin/env bash
# Creates the Python environment that regenerates the SD fixtures (diffusers, transformers, optimum, peft).
# Only needed to rebuild fixtures and reference outputs; `npm test` reads the committed ones.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="$here/.venv"
python3 -m venv "$venv"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q -r "$here/requirements.txt"
"$venv/bin/python" -c "import torch, diffusers, transformers, optimum.onnxruntime, peft; print('torch', torch.__version__, 'diffusers', diffusers.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__)"
