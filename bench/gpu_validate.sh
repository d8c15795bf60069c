#!/usr/bin/env bash
# The one command to run on a CUDA machine (≤ 10 minutes on one H100):
#
#     bash bench/gpu_validate.sh
#
# 1. finds a Python with a CUDA torch: $MULO_PYTHON, else ./.venv (if its torch sees a GPU), else a
#    ./.venv-gpu made with --system-site-packages over the system python3 that has one, else a fresh
#    ./.venv from requirements-dev.txt (pip, from the configured index/wheelhouse — the same pins as CI);
# 2. builds the CUDA extension in place: pip install --no-build-isolation --no-deps -e . with CUDA_HOME
#    found ($CUDA_HOME, else nvcc on PATH, else /usr/local/cuda), for this GPU's architecture only;
# 3. runs the GPU-marked tests, then the parity suites (tests/backends, tests/kernels, tests/optim) with
#    CUDA visible so their CUDA cases run;
# 4. runs bench/step_time.py at scale on the GPU: GPT-2 124M, ViT-B/16, GPT-2 355M, the 1.3B GPT-3-XL set,
#    the 1B LLaMA-like set, then synthetic sizes from 1M up to the largest that fits;
# 5. writes six files — gpu_validate.log, environment.txt, summary.txt, step_time.jsonl and two figures —
#    to $OUT when set, else bench/results/gpu_validate/, and appends the rows to bench/results/step_time.jsonl.
#    (The reference backend, the slow oracle, is timed only on sets up to 4e8 elements.)
#
# MULO_SKIP_BUILD=1 skips step 2 (mulo imported from the checkout); MULO_VALIDATE_ON_CPU=1 runs the same
# flow on CPU at --quick sizes, to check the script itself where there is no GPU.
# Each part has its own time limit (seconds; override by environment): MULO_T_SETUP=60, MULO_T_BUILD=180,
# MULO_T_TESTS=120, MULO_T_BENCH=240 (the benchmark stops starting measurements 30 s before its limit).
# No network is needed when a Python with torch is already there. Exit status: 0 when every part passed.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
OUT_DIR=${OUT:-$ROOT/bench/results/gpu_validate}
mkdir -p "$OUT_DIR" bench/results
LOG=$OUT_DIR/gpu_validate.log
: >"$LOG"
T_SETUP=${MULO_T_SETUP:-60}
T_BUILD=${MULO_T_BUILD:-180}
T_TESTS=${MULO_T_TESTS:-120}
T_BENCH=${MULO_T_BENCH:-240}
START=$(date +%s)
declare -a SUMMARY=()
FAILED=0

say() { echo "[gpu_validate $(($(date +%s) - START))s] $*" | tee -a "$LOG"; }
part() { # part NAME LIMIT CMD... : run with a time limit, log, record the outcome
    local name=$1 limit=$2
    shift 2
    say "── $name (limit ${limit}s): $*"
    local t0 rc dt
    t0=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    dt=$(($(date +%s) - t0))
    if [ "$rc" -eq 0 ]; then
        SUMMARY+=("PASS  $name (${dt}s)")
    else
        [ "$rc" -eq 124 ] && rc="timeout"
        SUMMARY+=("FAIL  $name (${dt}s, exit $rc)")
        FAILED=1
    fi
    say "── $name: exit $rc after ${dt}s"
}

has_cuda_torch() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }

# ---- 1. Python -------------------------------------------------------------------------------------------
PY=""
if [ -n "${MULO_PYTHON:-}" ]; then
    PY=$MULO_PYTHON
elif [ -x .venv/bin/python ] && has_cuda_torch .venv/bin/python; then
    PY=$ROOT/.venv/bin/python
elif [ -x .venv-gpu/bin/python ] && has_cuda_torch .venv-gpu/bin/python; then
    PY=$ROOT/.venv-gpu/bin/python
else
    for cand in python3 python; do
        if command -v "$cand" >/dev/null && has_cuda_torch "$cand"; then
            say "using $(command -v "$cand")'s torch through .venv-gpu (--system-site-packages)"
            timeout "$T_SETUP" "$cand" -m venv --system-site-packages .venv-gpu >>"$LOG" 2>&1 && PY=$ROOT/.venv-gpu/bin/python
            break
        fi
    done
    if [ -z "$PY" ] && [ ! -e .venv ]; then
        say "no Python with a CUDA torch found: creating .venv from requirements-dev.txt (needs the pinned wheels)"
        python3 -m venv .venv && timeout $((T_SETUP * 5)) .venv/bin/python -m pip install -q -r requirements-dev.txt \
            >>"$LOG" 2>&1 && PY=$ROOT/.venv/bin/python
    fi
fi
DEVICE=cuda
if [ "${MULO_VALIDATE_ON_CPU:-0}" = 1 ]; then # check this script's flow where there is no GPU (small sizes)
    DEVICE=cpu
    PY=${PY:-$ROOT/.venv/bin/python}
elif [ -z "$PY" ] || ! has_cuda_torch "$PY"; then
    say "FAIL: no Python whose torch sees a CUDA device (${PY:-none}); set MULO_PYTHON=/path/to/python"
    exit 2
fi
unset TRITON_INTERPRET # a real GPU: never the interpreter
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
if [ -z "${MULO_GIT_SHA:-}" ] && command -v git >/dev/null; then
    MULO_GIT_SHA=$(git rev-parse HEAD 2>/dev/null || true)
fi
export MULO_GIT_SHA
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG" "$OUT_DIR/environment.txt"
import platform, torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
try:
    import triton; print("triton", triton.__version__)
except ImportError:
    print("triton: not installed")
EOF
if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >>"$OUT_DIR/environment.txt" 2>&1 || true
fi

# ---- 2. build the CUDA extension -------------------------------------------------------------------------
if [ -z "${CUDA_HOME:-}" ]; then
    if command -v nvcc >/dev/null; then
        CUDA_HOME=$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")
    elif [ -x /usr/local/cuda/bin/nvcc ]; then
        CUDA_HOME=/usr/local/cuda
    fi
fi
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH=$CUDA_HOME/bin:$PATH
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ] && [ "$DEVICE" = cuda ]; then # build for this GPU only (fast)
    TORCH_CUDA_ARCH_LIST=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
    export TORCH_CUDA_ARCH_LIST
fi
say "CUDA_HOME=$CUDA_HOME TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-} MAX_JOBS=$MAX_JOBS"
BUILD_EXT=auto
[ -f csrc/build_ext_config.py ] && BUILD_EXT=1 # native sources exist: a failed build must fail this part
if [ "${MULO_SKIP_BUILD:-0}" = 1 ]; then # already built (e.g. make install): import mulo from the checkout
    say "MULO_SKIP_BUILD=1: not building"
    export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}
else
    part "build (pip install --no-build-isolation -e .)" "$T_BUILD" \
        env MULO_BUILD_EXT=$BUILD_EXT "$PY" -m pip install --no-build-isolation --no-deps --no-index -e .
fi

# ---- 3. tests on the GPU ---------------------------------------------------------------------------------
"$PY" - <<'EOF' 2>&1 | tee -a "$LOG"
import torch
from mulo.backends import available_backends, known_backends
print("known backends:", known_backends())
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print(f"available on {dev}:", available_backends(dev))
EOF
PARITY=()
for d in tests/backends tests/kernels tests/optim tests/celo2/test_triton_backend.py; do [ -e "$d" ] && PARITY+=("$d"); done
part "pytest -m gpu" $((T_TESTS / 3)) "$PY" -m pytest -q -m gpu tests
part "parity suites on CUDA (${PARITY[*]})" $((T_TESTS * 2 / 3)) "$PY" -m pytest -q --maxfail=10 "${PARITY[@]}"

# ---- 4. step time at scale -------------------------------------------------------------------------------
ROWS=$OUT_DIR/step_time.jsonl
: >"$ROWS"
if [ "$DEVICE" = cuda ]; then
    SETS=(--sets "gpt2-124m,vit-b16,gpt2-355m,gpt3-xl-1.3b,llama-1b" --sizes auto)
else
    SETS=(--quick)
fi
part "step_time at scale" "$T_BENCH" "$PY" bench/step_time.py --device "$DEVICE" "${SETS[@]}" \
    --budget-s $((T_BENCH - 30)) --max-seconds 6 --iters 20 --max-n reference=4e8 \
    --out "$ROWS" --out bench/results/step_time.jsonl
"$PY" bench/plot.py --results "$ROWS" --out-dir "$OUT_DIR" >>"$LOG" 2>&1 || say "plot failed (see log)"

# ---- 4b. the static performance model against this GPU (bench/gpu_static.py; issue 14) -----------------
# Added as its own step: compiles one variant per Triton kernel for sm_90 and reads the extension just built,
# writes the H100 prediction for the 1.3B set, then predicts again for this device (its preset at the copy
# bandwidth step 4 measured) and compares with step 4's step times ($ROWS) and with per-pass device times of
# real steps (torch.profiler, --measure). Rows: $OUT_DIR/gpu_static.jsonl, appended to
# bench/results/gpu_static.jsonl. Time limit MULO_T_STATIC (default 150 s). On CPU: the static model only.
T_STATIC=${MULO_T_STATIC:-150}
if [ "$DEVICE" = cuda ]; then
    part "gpu_static: prediction vs measurement" "$T_STATIC" "$PY" bench/gpu_static.py --check --readme \
        --compare "$ROWS" --measure --out "$OUT_DIR/gpu_static.jsonl" --out bench/results/gpu_static.jsonl
else
    part "gpu_static --check (static model only)" "$T_STATIC" "$PY" bench/gpu_static.py --check --no-write
fi

# ---- 5. summary ------------------------------------------------------------------------------------------
{
    echo "gpu_validate: $(date -u +%FT%TZ), $(($(date +%s) - START)) s, git ${MULO_GIT_SHA:-unknown}"
    cat "$OUT_DIR/environment.txt"
    printf '%s\n' "${SUMMARY[@]}"
    echo "rows: $(wc -l <"$ROWS") in $ROWS (also appended to bench/results/step_time.jsonl)"
} | tee "$OUT_DIR/summary.txt"
exit $FAILED
