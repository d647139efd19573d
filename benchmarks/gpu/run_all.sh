#!/usr/bin/env bash
# One device call: joint-loss kernels vs peers, scoring graph vs Hugging Face, then the C++ runtime on the
# AOTInductor package the scoring run compiles (benchmarks/gpu/runtime_session.sh, which checks a tiny package
# first). Results land in $OUT (copy them to benchmarks/results/).
# Peers (Liger, CCE) come from wheels carried in .whl/ (see ../shared/bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
  && export PYTHONPATH=/tmp/site
# The C++ runtime builds on the CPU cores while the GPU runs the first two parts.
(nice python3 -m pip install -q --upgrade --no-build-isolation --no-deps --target /tmp/jrm . \
  > "$OUT/runtime-build.log" 2>&1) &
BUILD=$!
export PYTHONUNBUFFERED=1
if [ -z "${JRM_SKIP_LOSS:-}" ]; then
  timeout 170 python3 benchmarks/gpu/joint_loss.py 2>&1 | tee "$OUT/joint-loss.log" | tail -40
fi
echo "== joint loss done at $(elapsed) s"
timeout 330 python3 benchmarks/gpu/scoring.py --no-compile --budget-s 120 --aoti-out /tmp/aoti 2>&1 \
  | tee "$OUT/scoring.log" | tail -30
echo "== scoring done at $(elapsed) s"
wait $BUILD; echo "runtime build rc=$?"
JRM_EXT_BUILT=1 JRM_AOTI_DIR=/tmp/aoti JRM_GPU_LIMIT_S=$(( ${JRM_GPU_LIMIT_S:-560} - $(elapsed) )) bash benchmarks/gpu/runtime_session.sh
echo "== all done at $(elapsed) s"
