#!/usr/bin/env bash
# The GPU check in one command, on a machine with an NVIDIA GPU (from the repository root or anywhere):
#
#   infra/gpu/check.sh                  # CUDA EP: every SD fixture family + full-size exports if built
#   infra/gpu/check.sh --provider cpu   # the same script on the CPU (how it is checked without a GPU)
#   FULL=sd15 infra/gpu/check.sh        # build the SD1.5-shaped fp16 export first (needs the sd-fixtures venv)
#
# Further flags go to gpu-runner/bench/gpu-check.ts (--families, --full, --full-steps, --no-flops, --out). The
# results land in gpu-runner/bench/GPU-CHECK.md and .json (CUDA), ready to commit.
#
# What the machine must already have (GPU machines here have no internet):
#   - an NVIDIA driver, CUDA 12 runtime libraries and cuDNN 9 (the base of infra/runner/Dockerfile,
#     nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04, has them);
#   - node_modules from `npm ci`, with onnxruntime-node's CUDA EP binaries (libonnxruntime_providers_cuda.so,
#     _shared.so, _tensorrt.so) in node_modules/onnxruntime-node/bin/napi-v6/linux/x64/. `npm ci` skips them here
#     (.npmrc: onnxruntime-node-install=skip); the runner image installs them (ONNXRUNTIME_NODE_INSTALL=cuda12).
#     Without internet, put the three files from the NuGet package Microsoft.ML.OnnxRuntime.Gpu.Linux of the same
#     version (runtimes/linux-x64/native/) in a folder and pass ORT_CUDA_LIBS=<folder>: they are copied in.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

provider=cuda
for ((i = 1; i <= $#; i++)); do
  if [[ "${!i}" == "--provider" ]]; then j=$((i + 1)); provider="${!j}"; fi
  if [[ "${!i}" == --provider=* ]]; then provider="${!i#--provider=}"; fi
done

[[ -d node_modules/onnxruntime-node ]] || { echo "check.sh: node_modules missing: run npm ci first" >&2; exit 2; }
ORT_BIN="node_modules/onnxruntime-node/bin/napi-v6/linux/x64"

if [[ "$provider" == cuda ]]; then
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader \
    || echo "check.sh: nvidia-smi not found; trying CUDA anyway" >&2
  if [[ ! -f "$ORT_BIN/libonnxruntime_providers_cuda.so" ]]; then
    if [[ -n "${ORT_CUDA_LIBS:-}" ]]; then
      cp "$ORT_CUDA_LIBS"/libonnxruntime_providers_{cuda,shared,tensorrt}.so "$ORT_BIN/"
    else
      echo "check.sh: onnxruntime-node's CUDA EP binaries are missing; downloading them (needs internet)" >&2
      (cd node_modules/onnxruntime-node && ONNXRUNTIME_NODE_INSTALL=cuda12 node script/install.js) || {
        echo "check.sh: could not download them: pre-provision them (see the top of this script) or pass ORT_CUDA_LIBS" >&2
        exit 3
      }
    fi
  fi
fi

if [[ -n "${FULL:-}" ]]; then
  for name in ${FULL//,/ }; do
    if ! ls -d gpu-runner/sd-fixtures/out/full/"$name"-fp16* >/dev/null 2>&1; then
      (cd gpu-runner/sd-fixtures && HF_HUB_OFFLINE=1 .venv/bin/python full_size.py --via-fp32 "$name")
    fi
  done
fi

# npm run puts the project-local Node 22 first on PATH (type stripping, as the runner needs).
exec npm run --silent gpu-check -w gpu-runner -- "$@"
