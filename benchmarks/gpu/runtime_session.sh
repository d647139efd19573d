#!/usr/bin/env bash
# One device call for the C++ runtime alone (about 8 minutes on an H100): build the extension here, check the
# CUDA path on a tiny bf16 package first (so a crash on the 3B package can be told apart from a broken CUDA
# path), then compile the 3B-shaped package and benchmark the runtime against the direct call.
# Results: $OUT/tiny/<gpu>-runtime.json and $OUT/<gpu>-runtime.json (copy the second to benchmarks/results/).
# Set JRM_AOTI_DIR to a folder that already holds scorer.manifest.json to skip the 3B compile (run_all.sh does).
# Rehearse it on a CPU before spending device time: JRM_DEVICE=cpu JRM_AOTI_DIR=<a tiny package's folder>.
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
export PYTHONUNBUFFERED=1
DEVICE=${JRM_DEVICE:-cuda}
[ "$DEVICE" = cuda ] && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

# Build while the GPU runs the tiny model (--upgrade: on a warm machine --target would keep an older build).
# run_all.sh has built it already and says so with JRM_EXT_BUILT=1.
if [ -z "${JRM_EXT_BUILT:-}" ]; then
  (nice python3 -m pip install -q --upgrade --no-build-isolation --no-deps --target /tmp/jrm . \
    > "$OUT/runtime-build.log" 2>&1) &
  BUILD=$!
fi
mkdir -p "$OUT/tiny"
timeout 150 python3 benchmarks/gpu/scoring.py --tiny --device "$DEVICE" --dtype bfloat16 --aoti-only --aoti-group \
  --aoti-out /tmp/aoti_tiny --out /tmp/tiny_scoring 2>&1 | tail -3
if [ -n "${BUILD:-}" ] && ! wait $BUILD; then
  echo "runtime build failed:"; tail -30 "$OUT/runtime-build.log"; exit 1
fi
echo "== extension built at $(elapsed) s"
export PYTHONPATH=/tmp/jrm:${PYTHONPATH:-}
# Facts a crash report needs: which CUDA runtimes the extension links (one besides torch's would be a second
# runtime in the process), and the room in /tmp, where each package loader unpacks its .so (7.5 GB for the 3B).
ldd /tmp/jrm/jrm_engine/_runtime*.so | grep -E "cudart|libtorch_cuda" || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
df -h /tmp | tail -1
timeout 90 python3 benchmarks/gpu/runtime.py --manifest /tmp/aoti_tiny/scorer.manifest.json --out "$OUT/tiny" \
  2>&1 | tee "$OUT/tiny/runtime.log" | tail -14
echo "== tiny CUDA check done at $(elapsed) s"

AOTI_DIR=${JRM_AOTI_DIR:-/tmp/aoti}
if [ ! -f "$AOTI_DIR/scorer.manifest.json" ]; then
  timeout 330 python3 benchmarks/gpu/scoring.py --aoti-only --aoti-out "$AOTI_DIR" --out /tmp/full_scoring 2>&1 | tail -3
fi
echo "== 3B package at $(elapsed) s"
LEFT=$(( ${JRM_GPU_LIMIT_S:-560} - $(elapsed) ))
if [ -f "$AOTI_DIR/scorer.manifest.json" ] && [ "$LEFT" -gt 45 ]; then
  timeout $(( LEFT - 5 )) python3 benchmarks/gpu/runtime.py --manifest "$AOTI_DIR/scorer.manifest.json" \
    2>&1 | tee "$OUT/runtime.log" | tail -25
else
  echo "3B runtime benchmark skipped: manifest in $AOTI_DIR: $(ls "$AOTI_DIR" 2>/dev/null | tr '\n' ' '), ${LEFT} s left"
fi
echo "== runtime session done at $(elapsed) s"
