#!/usr/bin/env bash
# Retrain the tiny-shapes family in resumable stages:  bash gpu-runner/zoo/train.sh [stage ...]
# With no argument it runs every unfinished stage in order (vae evaluator base lcm rf vaedec loras controlnet).
# Set ZOO_FOREGROUND=1 to run in the foreground; otherwise it detaches (nohup setsid nice -n 10) and logs to
# gpu-runner/zoo/.work/logs/train.sh.log.  Re-running resumes from the last checkpoint.
set -euo pipefail
Z="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mkdir -p "$Z/.work/logs"
if [ "${ZOO_FOREGROUND:-0}" != "1" ]; then
  if [ -f "$Z/.work/train.pid" ] && kill -0 "$(cat "$Z/.work/train.pid")" 2>/dev/null; then
    echo "already running: pid $(cat "$Z/.work/train.pid") (log: $Z/.work/logs/train.sh.log)"; exit 0
  fi
  ZOO_FOREGROUND=1 nohup setsid nice -n 10 bash "$Z/train.sh" "$@" >>"$Z/.work/logs/train.sh.log" 2>&1 </dev/null &
  echo $! > "$Z/.work/train.pid"
  echo "started pid $! ; follow with: tail -f $Z/.work/logs/*.log"
  exit 0
fi
# OpenBLAS: Debian's torch links the generic libblas.so.3 (reference BLAS, ~4 GFLOPS); OpenBLAS is ~15x faster.
OB=/usr/lib/x86_64-linux-gnu/openblas-pthread
if [ ! -f "$OB/libblas.so.3" ]; then
  OB="$Z/.work/openblas/usr/lib/x86_64-linux-gnu/openblas-pthread"
  if [ ! -f "$OB/libblas.so.3" ]; then
    DEB=$(ls /var/cache/apt/archives/libopenblas0-pthread_*.deb 2>/dev/null | head -1 || true)
    if [ -n "$DEB" ]; then mkdir -p "$Z/.work/openblas" && dpkg-deb -x "$DEB" "$Z/.work/openblas"; fi
  fi
fi
if [ -f "$OB/libblas.so.3" ]; then export LD_LIBRARY_PATH="$OB${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; fi
export OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-2} OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
# Passive OpenMP waiting: on a shared CPU, spinning threads made a step 3-10x slower (measured: 0.8 s vs 3-11 s).
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
PY=${PYTHON:-/usr/bin/python3}
STAGES=("$@")
if [ ${#STAGES[@]} -eq 0 ]; then STAGES=(vae evaluator base lcm rf vaedec loras controlnet); fi
for s in "${STAGES[@]}"; do
  echo "$(date -u '+%F %T') === stage $s ==="
  if ! (cd "$Z/.." && "$PY" -m zoo.train "$s"); then
    echo "$(date -u '+%F %T') stage $s failed or is not available; stopping"; exit 1
  fi
done
echo "$(date -u '+%F %T') all requested stages done"
