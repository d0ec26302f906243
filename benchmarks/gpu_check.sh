#!/usr/bin/env bash
# Ready for the first GPU (issue 19; issues 3 and 7 before it).
#
#   bash benchmarks/gpu_check.sh          # results in ${OUT:-/tmp}/gpu_check.json
#
# Prints the GPU and torch, then runs benchmarks/gpu_train_check.py --device cuda,
# which writes every part and the verdicts to one JSON. Its parts, with their
# timeouts and what each should take on one H100 (estimates: not yet run on a GPU):
#   plan_eager            45 s  (20-30 s)  the planner's step time and peak memory against an
#                                          eager bf16 step of the 350M preset: the 15% goal
#   throughput_gpt2_350m 125 s  (60-110 s) the 350M preset (8 x 1024), bf16 + torch.compile,
#                                          5 warm-up + 25 timed steps: tokens/s, MFU (the >= 50%
#                                          goal), peak memory against the planner
#   throughput_gpt2_124m  70 s  (35-60 s)  the same for the 124M preset
#   trainer_data          30 s  (10-20 s)  a tiny corpus through fmforge data/tokenizer/tokenize
#   fsdp                  55 s  (25-40 s)  torchrun on every GPU -m fmforge train, train.parallel=fsdp,
#                                          20 steps, DCP checkpoint, consolidate
#   hsdp                  45 s  (25-40 s)  the same as hsdp, R x S on every GPU (2 x 4 on 8);
#                                          skipped on 1 GPU
#   meta_build_1b         80 s  (35-60 s)  llama-1b built on the meta device and sharded over every
#                                          GPU: build time, memory vs the shard, exact parameter
#                                          count, 2 steps with a finite loss
# 405 s of timeouts on one GPU (450 s with HSDP), capped at 450 s in all; about 4-6
# minutes expected on one H100, under 8 in the worst case.
#
# Exits 2 without a CUDA device or a usable Python, or when the check was cut off;
# 1 when a part failed or a goal was missed (gpu_check.json says which); 0 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"

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
'| CUDA', torch.version.cuda, '|', torch.cuda.device_count(), 'x', torch.cuda.get_device_name(0))"
"$PY" -c "import fmforge, pydantic, yaml" || die "fmforge's dependencies are missing for $PY (pip install -e .)"

# The Python side stops its parts at 450 s; this outer limit only catches a hang
# of the orchestrator itself (SIGTERM: it kills the running part and writes the JSON).
timeout 470 "$PY" benchmarks/gpu_train_check.py --device cuda --out "$OUT_DIR"
rc=$?
case "$rc" in
  0) echo "gpu_check: every part passed and every goal was met";;
  1) echo "gpu_check: a part FAILED or a goal was MISSED: see the table above and $OUT_DIR/gpu_check.json" >&2;;
  124) echo "gpu_check: gpu_train_check.py was cut off after 470 s; $OUT_DIR/gpu_check.json holds the parts that finished" >&2; rc=2;;
  *) echo "gpu_check: gpu_train_check.py failed (exit $rc)" >&2; rc=2;;
esac
exit "$rc"
