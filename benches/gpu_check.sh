#!/usr/bin/env bash
# The GPU half of the exit head's checks, for a machine with one NVIDIA GPU, a CUDA torch and
# Triton, and no network: builds the extension with the CUDA kernels, runs the CUDA and Triton
# tests (among them no host sync in forward + backward, CUDA-graph replay), then their
# benchmarks (timings, bandwidth against the GPU's peak, launches per forward, and one sample's
# walk to its exit as a CUDA graph against the eager walk with host reads), and one epoch of the
# paper preset's teacher and students with --amp off and --amp bf16 (benches/epoch_time.py;
# random images of CIFAR-10's size where CIFAR-10 is absent). Every step has a timeout so the
# whole run stays under 10 minutes; a summary comes last.
# Log: ${OUT:-/tmp}/gpu_check.log. PYTHON picks the python.
set -euo pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-/tmp}/gpu_check.log"
mkdir -p "$(dirname "$LOG")"
exec > >(tee "$LOG") 2>&1

PY="${PYTHON:-python}"
BUDGET=${GPU_CHECK_BUDGET:-580}  # seconds for all steps together
SUMMARY=()
FAILED=0
unset TRITON_INTERPRET  # the real Triton kernels, not the CPU interpreter
# Compile for the local GPU only, and say which in the log.
ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-$ARCH}"
export TORCH_CUDA_ARCH_LIST MAX_JOBS="${MAX_JOBS:-$(nproc)}"

# step NAME CAP CMD...: runs CMD under a timeout of CAP seconds or what is left of BUDGET.
step() {
  local name=$1 cap=$2 start=$SECONDS rc=0
  shift 2
  if ((BUDGET - SECONDS < cap)); then cap=$((BUDGET - SECONDS)); fi
  if ((cap <= 0)); then
    SUMMARY+=("SKIP  $name: time budget spent")
    FAILED=1
    return
  fi
  echo
  echo "=== $name (timeout ${cap}s, ${SECONDS}s in)"
  timeout "$cap" "$@" || rc=$?
  if ((rc == 0)); then
    SUMMARY+=("ok    $name ($((SECONDS - start))s)")
  else
    local why="exit $rc"
    if ((rc == 124)); then why="timed out"; fi
    SUMMARY+=("FAIL  $name: $why after $((SECONDS - start))s")
    FAILED=1
  fi
}

"$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__, torch.cuda.get_device_name(0))'
step "build with CUDA (arch $TORCH_CUDA_ARCH_LIST)" 200 bash -c '
  DISTREE_BUILD_CUDA=1 "$0" -m pip install --no-build-isolation --no-deps --no-index -e . ||
  { echo "pip could not install offline; building in place"
    DISTREE_BUILD_CUDA=1 "$0" setup.py build_ext --inplace; }' "$PY"
step "tests -k 'cuda or triton'" 150 "$PY" -m pytest -q tests -k "cuda or triton"
step "benchmarks -k 'cuda or triton'" 180 "$PY" -m pytest -q benches -k "cuda or triton" \
  --benchmark-max-time=0.2 --benchmark-columns=median,ops
step "paper preset: one epoch, --amp off and bf16" 240 "$PY" benches/epoch_time.py amp \
  --out "$(mktemp -d /tmp/epoch_time.XXXX)"

echo
echo "=== summary ($SECONDS s; the benchmarks' tables are just above; log $LOG)"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
