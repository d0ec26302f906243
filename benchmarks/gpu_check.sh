#!/usr/bin/env bash
# The planner and the training engine on a lent GPU (issues 3 and 7).
#
#   bash benchmarks/gpu_check.sh          # results in ${OUT:-/tmp}/gpu_check.json
#
# Prints the GPU and torch, then
#  1. benchmarks/plan_vs_measured.py --preset 350m on CUDA, eager (what the planner
#     models; the 15% goal on step time and peak memory is checked on this run);
#     with GPU_CHECK_PLANNER_COMPILE=1 also under torch.compile (for information);
#  2. benchmarks/gpu_train_check.py: bf16 + torch.compile tokens/s and MFU of ~125M
#     and ~350M models at seq 2048, their peak memory against the planner, and
#     FSDP2 on 1 GPU for 20 steps through `torchrun ... -m fmforge train`.
# About 4-6 minutes on an H100. Exits 2 without a CUDA device or when a part
# could not run, 1 if the plan is more than 15% off (eager) or a training check
# failed, 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
TOL="${GPU_CHECK_TOLERANCE:-15}"

die() { echo "gpu_check: $*" >&2; exit 2; }

command -v nvidia-smi >/dev/null || die "no nvidia-smi: this machine has no NVIDIA GPU (run it on a lent GPU)"
nvidia-smi || die "nvidia-smi failed: no usable NVIDIA GPU"

# The first Python whose torch sees CUDA: $PYTHON, the project venv, then python3.
PY=""
for cand in "${PYTHON:-}" .venv/bin/python python3 python; do
  [ -n "$cand" ] && command -v "$cand" >/dev/null || continue
  if "$cand" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    PY="$cand"; break
  fi
done
[ -n "$PY" ] || die "no Python with a CUDA-enabled torch found (tried \$PYTHON, .venv/bin/python, python3); \
install one, or set PYTHON=/path/to/python"
"$PY" -c "import torch; print('python', __import__('sys').version.split()[0], '| torch', torch.__version__, \
'| CUDA', torch.version.cuda, '|', torch.cuda.get_device_name(0))"
"$PY" -c "import fmforge, pydantic, yaml" || die "fmforge's dependencies are missing for $PY (pip install -e .)"

run() {  # run NAME SECONDS ARGS...: one plan_vs_measured run, JSON to $OUT_DIR/gpu_check_NAME.json
  local name="$1" secs="$2"; shift 2
  echo; echo "== $name: plan_vs_measured.py --preset 350m --device cuda $*"
  timeout "$secs" "$PY" benchmarks/plan_vs_measured.py --preset 350m --device cuda \
    --json "$OUT_DIR/gpu_check_$name.json" "$@"
}

# Results of an earlier check must not pass for this one's.
rm -f "$OUT_DIR"/gpu_check_eager.json "$OUT_DIR"/gpu_check_compile.json "$OUT_DIR"/gpu_train_check.json
start=$(date +%s)
run eager 240 --fail-over "$TOL"; eager_rc=$?
compile_rc=skipped
if [ "${GPU_CHECK_PLANNER_COMPILE:-0}" = 1 ] && [ $(( $(date +%s) - start )) -lt 120 ]; then
  run compile 240 --compile; compile_rc=$?
fi

echo; echo "== gpu_train_check.py --device cuda: bf16 + compile throughput, memory vs plan, FSDP2 via torchrun"
timeout 330 "$PY" benchmarks/gpu_train_check.py --device cuda --out "$OUT_DIR"; train_rc=$?

# One JSON with every run and the verdict.
"$PY" - "$OUT_DIR" "$eager_rc" "$compile_rc" "$TOL" "$train_rc" <<'EOF'
import json, sys
from pathlib import Path
out, eager_rc, compile_rc, tol, train_rc = Path(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
res = {"tolerance_pct": tol, "eager_exit": eager_rc, "compile_exit": compile_rc, "train_check_exit": train_rc}
for name, file in (("eager", "gpu_check_eager.json"), ("compile", "gpu_check_compile.json"),
                   ("train_check", "gpu_train_check.json")):
    f = out / file
    res[name] = json.loads(f.read_text()) if f.is_file() else None
(out / "gpu_check.json").write_text(json.dumps(res, indent=2) + "\n")
print(f"\nwrote {out / 'gpu_check.json'}")
EOF

status=0
case "$eager_rc" in
  0) echo "gpu_check: planner OK: step time and peak memory within ${TOL}% of the plan (eager)";;
  1) echo "gpu_check: planner MISS: the plan is more than ${TOL}% off (see the table above)" >&2; status=1;;
  124) echo "gpu_check: the eager planner run timed out" >&2; status=2;;
  *) echo "gpu_check: the eager planner run failed (exit $eager_rc)" >&2; status=2;;
esac
case "$train_rc" in
  0) echo "gpu_check: training checks OK";;
  1) echo "gpu_check: a training check FAILED (see above)" >&2; [ "$status" = 2 ] || status=1;;
  124) echo "gpu_check: gpu_train_check.py timed out" >&2; status=2;;
  *) echo "gpu_check: gpu_train_check.py failed (exit $train_rc)" >&2; status=2;;
esac
exit "$status"
