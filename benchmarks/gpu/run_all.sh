#!/usr/bin/env bash
# One device call, at most JRM_GPU_LIMIT_S (8 minutes; a 15-minute lease then leaves room to rerun a failed part
# with JRM_PARTS): build the runtime, check its CUDA path on a tiny bf16 package, compile the 3B package (in the
# background), the joint-loss table, the scoring table (HF eager, graph eager, graph torch.compile max-autotune,
# groups of 12), then the runtime table (package direct vs runtime 1/8/64 clients, groups). Each part runs in its
# own process under its own timeout and writes its JSON under $OUT when it finishes, so a crash in one part keeps the others' figures;
# $OUT/session.json says how each part ended. A part that dies of a signal is rerun once under gdb (if present
# and time allows) for the native stack of every thread, and any core file it left is printed with `bt`.
#
#   JRM_GPU_LIMIT_S=480   the session's deadline: parts that would start after it are skipped (recorded)
#   JRM_PARTS="..."       a subset of: build tiny package3b loss scoring runtime (e.g. a rerun of one)
#   JRM_DEVICE=cpu        rehearsal on a CPU with tiny shapes (also for the "3B" parts): known to run end to end
#   JRM_AOTI_DIR=DIR      a folder that already holds scorer.manifest.json: no 3B compile
# Peers for the loss table (Liger, CCE) come from wheels carried in .whl/ (see ../shared/bench/README.md).
set -uo pipefail
cd "$(dirname "$0")/../.."
T0=$(date +%s)
elapsed() { echo $(( $(date +%s) - T0 )); }
LIMIT=${JRM_GPU_LIMIT_S:-480}
DEVICE=${JRM_DEVICE:-cuda}
PARTS=${JRM_PARTS:-build tiny package3b loss scoring runtime}
AOTI_DIR=${JRM_AOTI_DIR:-/tmp/aoti}
OUT=${OUT:?set OUT to the folder for results}
mkdir -p "$OUT/tiny"
export PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1
ulimit -c unlimited 2>/dev/null || true
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
# A rehearsal on a CPU runs the "3B" parts at the tiny shape, so the whole script runs in a few minutes.
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  SHAPE=() DTYPE=bfloat16 LOSS=()
else
  SHAPE=(--tiny) DTYPE=float32 LOSS=(--tiny)
fi
echo "core pattern: $(cat /proc/sys/kernel/core_pattern 2>/dev/null); gdb: $(command -v gdb || echo none)"
if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi

# session.json: one entry per part, rewritten (temp file + rename) as each part ends.
STATUS="$OUT/parts.tsv"
: > "$STATUS"
record() {  # name, outcome, seconds
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$STATUS"
  python3 - "$STATUS" "$OUT/session.json" "$DEVICE" "$LIMIT" <<'EOF'
import json, os, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
report = {"device": sys.argv[3], "limit_s": int(sys.argv[4]),
          "parts": [{"part": n, "outcome": o, "seconds": int(s)} for n, o, s in rows]}
tmp = f"{sys.argv[2]}.{os.getpid()}.tmp"  # the build records from a background job: no shared temp name
with open(tmp, "w") as f:
    json.dump(report, f, indent=2)
os.replace(tmp, sys.argv[2])
EOF
}

# part NAME TIMEOUT_S COMMAND...: runs COMMAND under timeout, logs to $OUT/NAME.log, records how it ended.
part() {
  local name=$1 limit=$2; shift 2
  local left=$(( LIMIT - $(elapsed) ))
  if [ "$left" -lt 30 ]; then
    echo "== $name skipped: ${left} s left"; record "$name" "skipped (${left} s left)" 0; return 1
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  echo "== $name (timeout ${limit} s) at $(elapsed) s"
  local t=$(date +%s)
  touch "$OUT/.part-start"  # a core file newer than this is the part's
  timeout -k 10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  tail -25 "$OUT/$name.log"
  local outcome="ok"
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then outcome="timed out after ${limit} s"
  elif [ "$rc" -gt 128 ]; then outcome="killed by signal $(kill -l $(( rc - 128 )) 2>/dev/null || echo $(( rc - 128 )))"
  elif [ "$rc" -ne 0 ]; then outcome="exit status $rc"
  fi
  grep -qE "part '[a-z]+' failed: signal" "$OUT/$name.log" && outcome="$outcome; a subprocess part died of a signal"
  record "$name" "$outcome" $(( $(date +%s) - t ))
  echo "== $name: $outcome"
  if [[ "$outcome" == *signal* ]]; then native_stack "$name" "$@"; fi
  [ "$outcome" = ok ]
}

# After a crash: `bt` of any core the part left, then (time allowing) the part once more under gdb.
native_stack() {
  local name=$1; shift
  for core in $(find . /tmp -maxdepth 1 -name 'core*' -newer "$OUT/.part-start" -type f 2>/dev/null); do
    command -v gdb > /dev/null && gdb -q -batch -ex "thread apply all bt 40" "$(command -v python3)" "$core" \
      > "$OUT/$name.core-bt.log" 2>&1 && tail -60 "$OUT/$name.core-bt.log"
    rm -f "$core"  # gigabytes with a 3B package loaded
  done
  command -v gdb > /dev/null || return 0
  local left=$(( LIMIT - $(elapsed) ))
  [ "$left" -lt 60 ] && { echo "no time left to rerun $name under gdb"; return 0; }
  echo "== $name again under gdb (native stacks in $OUT/$name.gdb.log)"
  if [[ "$*" == *runtime.py* ]]; then  # runtime.py runs its parts in subprocesses and wraps those in gdb itself
    JRM_PART_GDB=1 timeout -k 10 $(( left - 10 )) "$@" > "$OUT/$name.gdb.log" 2>&1
  else
    timeout -k 10 $(( left - 10 )) gdb -q -batch -ex "handle SIGPIPE nostop noprint pass" -ex run \
      -ex "thread apply all bt 40" --args "$@" > "$OUT/$name.gdb.log" 2>&1
  fi
  grep -n -m1 -A40 "received signal" "$OUT/$name.gdb.log" || tail -60 "$OUT/$name.gdb.log"
}

# The runtime builds on the CPU cores while the GPU runs the tiny model (--upgrade: on a warm machine --target
# would keep an older build).
if wanted build; then
  ( t=$(date +%s)
    if nice python3 -m pip install -q --upgrade --no-build-isolation --no-deps --target /tmp/jrm . \
      > "$OUT/build.log" 2>&1; then o=ok; else o="exit status $?"; fi
    record build "$o" $(( $(date +%s) - t )) ) &
  BUILD=$!
fi
if wanted tiny; then
  part tiny_package 150 python3 benchmarks/gpu/scoring.py --tiny --device "$DEVICE" --dtype bfloat16 --aoti-only \
    --aoti-group --aoti-out /tmp/aoti_tiny --out "$OUT/tiny"
fi
# The 3B compile (256 s for the main package on an H100) is mostly CPU-bound codegen and C++ compilation: it runs
# niced in the background while the GPU times the loss and scoring parts (which record that it did), and the
# runtime parts that need it come last.
if wanted package3b && [ ! -f "$AOTI_DIR/scorer.manifest.json" ]; then
  part package3b 420 nice python3 benchmarks/gpu/scoring.py "${SHAPE[@]}" --device "$DEVICE" --dtype "$DTYPE" \
    --aoti-only --aoti-group --aoti-out "$AOTI_DIR" --out /tmp/package3b_scoring &
  PACKAGE=$!
fi
if wanted loss; then
  part loss 120 python3 benchmarks/gpu/joint_loss.py "${LOSS[@]}"
fi
if wanted scoring; then
  part scoring 200 python3 benchmarks/gpu/scoring.py "${SHAPE[@]}" --device "$DEVICE" --dtype "$DTYPE" \
    --compile-mode max-autotune --budget-s 150 --out "$OUT"
fi
if [ -n "${BUILD:-}" ]; then
  wait "$BUILD"
  grep -q "^build	ok" "$STATUS" || { echo "runtime build failed:"; tail -30 "$OUT/build.log"; }
fi
if [ -f /tmp/jrm/jrm_engine/__init__.py ]; then
  export PYTHONPATH=/tmp/jrm:${PYTHONPATH:-}
  # Facts a crash report needs: which CUDA runtimes the extension links (one besides torch's would be a second
  # runtime in the process), and the room in /tmp, where each package loader unpacks its .so.
  ldd /tmp/jrm/jrm_engine/_runtime*.so | grep -E "cudart|libtorch_cuda" || true
fi
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
df -h /tmp | tail -1
if wanted tiny && [ -f /tmp/aoti_tiny/scorer.manifest.json ]; then
  part tiny_runtime 90 python3 benchmarks/gpu/runtime.py --manifest /tmp/aoti_tiny/scorer.manifest.json \
    --out "$OUT/tiny"
fi
[ -n "${PACKAGE:-}" ] && wait "$PACKAGE"
if wanted runtime && [ -f "$AOTI_DIR/scorer.manifest.json" ]; then
  # A few candidates through every bucket, both workers and the group package, checked against the package
  # alone: a crash here is found in seconds, before the timed runs.
  part runtime_smoke 90 python3 benchmarks/gpu/runtime_smoke.py --manifest "$AOTI_DIR/scorer.manifest.json"
  part runtime 240 python3 benchmarks/gpu/runtime.py --manifest "$AOTI_DIR/scorer.manifest.json" --out "$OUT"
fi
echo "== session done at $(elapsed) s"
column -t -s $'\t' "$STATUS"
