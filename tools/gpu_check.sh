#!/usr/bin/env bash
# One-call GPU check, for a short session on a GPU machine:
#   tools/gpu_check.sh OUTDIR [DATA_DIR] [RUNS]
# 1. setup: nvidia-smi, GPU name, cuDNN / cuBLAS / cuRAND versions; LD_LIBRARY_PATH from the
#    Python wheels (site-packages/nvidia/*/lib) when present; builds build-gpu with cmake +
#    ninja unless build/ (or $BUILD_DIR) already holds cs_gpu_tests, kernel_bench and speedrun.
# 2. gpu_tests and sanitizer, at the same time (they check correctness, not speed; the
#    benchmarks after them then have the GPU to themselves):
#    - gpu_tests: the GPU tests (ctest -L gpu --parallel 4 when the build's CTest files point
#      at this checkout, else the test binary directly, a build carried from another path
#      having stale absolute paths in its CTest files: in five shards by source file, one
#      summary row each, see shards() below).
#    - sanitizer: the GPU tests under compute-sanitizer memcheck (the test binary directly, in
#      the same five shards, each "~[recipe]": the batch-512 cases are left out, the odd-shape
#      cases exercise every predicated edge at a fraction of the cost), and racecheck on the
#      mma.sync conv kernels' odd shapes ("[igemm]~[recipe]", shared-memory races; the wgmma
#      kernels' tensor-core reads go through the async proxy, which racecheck may not model).
#      Both with CS_TEST_QUICK_AUTOTUNE=1: the engine's setup in the tests skips the timing
#      repetitions (tests/gpu_test_util.h).
#    (The first H100 run, docs/results/2026-11-27-h100-gpu-check/, ran them one after the
#    other and memcheck hit its limit in the batch-512 cuDNN and BN cases, now tagged [recipe].)
#    probes (only when GPU_CHECK_STEPS names it), before both: Catch2 filters of PROBES
#    (";"-separated; default "[tma];[tma_halo];[tma_small4];[tma_small3];[tma_small2];
#    [tma_small1];[halo];[halo_mn]": the TMA copies and tiles, the halo tiles' copies and tiles,
#    the hidden per-image-size TMA im2col copies, the wgmma descriptor shift probes, K-major and
#    M/N-major), each in its own process, one after the other, into gpu_tests.log
#    (one summary row each): a faulting TMA copy ends its process's CUDA context, so these run
#    alone first after a change to the TMA tiles (docs/conv_kernels.md, "Next GPU sessions").
# 3. kernel_bench: kernel_bench --json OUTDIR/kernel_bench.json.
# 4. conv_bench (when built): the hand-written conv kernels against cuDNN,
#    --json OUTDIR/conv_bench.json, plus CONV_BENCH_ARGS (e.g. "--configs
#    wgmma_128x128x64_s3,wgmma_128x128x64_s4_pp_im2col" to time a few tiles in a short session).
# 5. speedrun (only with DATA_DIR or $CIFAR10_DIR): speedrun --device cuda --runs RUNS (default
#    3) --json OUTDIR/speedrun.json. DATA_DIR may be the cifar-10-batches-bin folder, its parent,
#    or the repo's compressed pack (a folder with build_bins.py, e.g. ../shared/cifar10), which
#    is unpacked to /tmp/cifar10-bins first.
# 6. torch (only with DATA_DIR or $CIFAR10_DIR, and a python3 that imports torch): the PyTorch
#    reference of the recipe on the same GPU and data, tools/reference/resnet9_torch.py train
#    --runs TORCH_RUNS (default RUNS; one warm-up run first) --json OUTDIR/torch.json: the
#    side-by-side baseline. It starts no new run after T_TORCH - 60 seconds.
# 7. crosscheck (a python3 that imports torch, and reference_dump): the GPU engine's training
#    step against PyTorch's from the same weights and batch (reference_dump --gpu, full width,
#    batch 64, synthetic images; resnet9_torch.py compare --device cuda; docs/torch_crosscheck.md).
#    No data needed.
# 8. variants (only when GPU_CHECK_STEPS names it, and with DATA_DIR or $CIFAR10_DIR): speedrun
#    once per engine variant of SPEEDRUN_VARIANTS, VARIANT_RUNS runs each (default 5), into
#    OUTDIR/speedrun_NAME.json: the per-layer conv selection and the fused epilogues measured in
#    training against the default, in one session on the same data and GPU. SPEEDRUN_VARIANTS
#    is "NAME=ARGS" items separated by ";" (default: "cudnn=;auto=--conv-kernels auto;
#    fused=--conv-kernels auto --fusions all;fused_auto=--conv-kernels auto --fusions auto":
#    every fusion, and each only where it timed faster at setup); NAME a word.
# 9. profile (only when GPU_CHECK_STEPS names it): Nsight Compute (ncu) on chosen kernels of
#    conv_bench, one OUTDIR/ncu_NAME.txt per PROFILE_SPECS item "NAME#LAYERS#REGEX#COUNT#SET",
#    items separated by ";": conv_bench --layers LAYERS --iters 1 under ncu, profiling the first
#    COUNT launches whose demangled name matches REGEX, with the sections of SET ("full": speed
#    of light, launch, occupancy, warp states, scheduler, compute and memory workload, source
#    counters; "light": speed of light and launch shape only, for many launches).
#    The default: eight wgmma forward tiles on layer1 (the block-wide s3, the persistent
#    ping-pong s4_pp_im2col, s5_pp_im2col, s6_pp_im2col and s7_pp_im2col, the cooperative
#    256x128 one, the halo tiles pp_halo and s10_pp_halo), the weight gradients of
#    s7_pp_im2col and the cooperative 128x256 one on layer2, and cuDNN's forward kernel on
#    layer1, to compare with.
# GPU_CHECK_STEPS (comma-separated, default all but variants: gpu_tests,kernel_bench,conv_bench,
# speedrun,torch,crosscheck,sanitizer) picks steps, so a short device session can split them
# over two calls (the data only arrives with the second; see README "Working with a GPU
# machine").
# SPEEDRUN_ARGS adds arguments to the speedrun step (e.g. "--fused-pool --warmup").
# Every step has a time limit; a failing step does not stop the others; the exit status is
# non-zero if any step failed. OUTDIR holds at most 7 files (a device call returns at most 8):
# gpu_check.log (setup, benchmarks', speedrun's and torch's output, the summary table),
# gpu_tests.log, sanitizer.log, kernel_bench.json, conv_bench.json, speedrun.json, torch.json;
# the variants step adds one speedrun_NAME.json per variant, so run it in a call of its own
# (GPU_CHECK_STEPS=variants: gpu_check.log and four files by default), and the profile step
# one ncu_NAME.txt per PROFILE_SPECS item (five by default: with conv_bench, seven files).
set -u -o pipefail

if [ $# -lt 1 ]; then
  echo "usage: $0 OUTDIR [DATA_DIR] [RUNS]" >&2
  exit 2
fi
OUT=$1
DATA=${2:-${CIFAR10_DIR:-}}
RUNS=${3:-3}
TORCH_RUNS=${TORCH_RUNS:-$RUNS}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$ROOT" || exit 2

# Time limits per step (seconds).
T_BUILD=${T_BUILD:-900}
T_SANITIZER=${T_SANITIZER:-300}
T_RACECHECK=${T_RACECHECK:-240}
T_TESTS=${T_TESTS:-240}
T_PROBE=${T_PROBE:-60}
T_BENCH=${T_BENCH:-120}
# conv_bench checks every variant against host sums over whole tensors before timing it, and
# with thirteen wgmma tiles and their fused epilogues it has some 700 rows.
T_CONV_BENCH=${T_CONV_BENCH:-240}
T_SPEEDRUN=${T_SPEEDRUN:-600}
T_TORCH=${T_TORCH:-600}
T_CROSSCHECK=${T_CROSSCHECK:-180}

STEPS=",${GPU_CHECK_STEPS:-gpu_tests,kernel_bench,conv_bench,speedrun,torch,crosscheck,sanitizer},"
# want STEP: whether GPU_CHECK_STEPS includes STEP.
want() { [[ "$STEPS" == *",$1,"* ]]; }

NAMES=()
RESULTS=()
SECONDS_TAKEN=()
FAILED=0

# run_step NAME LIMIT LOG CMD...: runs CMD with a time limit, output appended to OUTDIR/LOG.
run_step() {
  local name=$1 limit=$2 log=$3
  shift 3
  local t0 rc status
  t0=$(date +%s)
  echo "=== $name: $* (limit ${limit}s)" | tee -a "$OUT/$log"
  timeout --kill-after=15 "$limit" "$@" 2>&1 | tee -a "$OUT/$log"
  rc=$?
  status=$(status_of "$rc" "$limit")
  [ "$rc" -ne 0 ] && FAILED=1
  local secs=$(($(date +%s) - t0))
  # The seconds also on this line: a device call cut short never prints the summary table.
  echo "=== $name: $status (${secs}s, $(date -u +%H:%M:%S) UTC)" | tee -a "$OUT/$log"
  NAMES+=("$name")
  RESULTS+=("$status")
  SECONDS_TAKEN+=("$secs")
}

# status_of RC LIMIT: the summary word for an exit status (callers set FAILED themselves:
# this runs in a subshell).
status_of() {
  if [ "$1" -eq 0 ]; then
    echo ok
  elif [ "$1" -eq 124 ] || [ "$1" -eq 137 ]; then
    echo "TIMEOUT (${2}s)"
  else
    echo "FAIL (rc $1)"
  fi
}

# The GPU test binary's shards, by source file (Catch2's -# file-name tags): the three files
# with the most CPU-reference work each alone, the wgmma kernels alone (a hang in the newest
# kernels costs only their shard), the halo tiles (the newest) alone, and everything else, so a
# new test file is never left out.
# Each entry is NAME=FILTER; FILTER's comma-separated terms are OR-ed. Hidden tests ("[.]": probes
# a session runs by name, one process each, e.g. "[tma_small1]") are left out: a file-name tag
# alone selects them too (session 10's wgmma shard ran a hidden probe whose TMA copy faulted and
# took the rest of the shard's CUDA context with it).
shards() {  # shards EXTRA: EXTRA (e.g. "~[recipe]") is appended to every term
  local x="~[.]$1"
  local own="~[#resnet9_gpu_test]~[#implicit_gemm_gpu_test]~[#igemm_backward_gpu_test]~[#wgmma_conv_gpu_test]"
  own+="~[#wgmma_halo_gpu_test]"
  echo "resnet9=[#resnet9_gpu_test]$x"
  echo "igemm=[#implicit_gemm_gpu_test]$x,[#igemm_backward_gpu_test]$x"
  echo "wgmma=[#wgmma_conv_gpu_test]$x"
  echo "halo=[#wgmma_halo_gpu_test]$x"
  echo "other=[gpu]$own$x"
}

# Background jobs: start_job / start_shards launch, collect_jobs waits for all of them and
# appends each one's output to its log and one summary row (STEP or STEP[NAME]), in the order
# they were started. Each runs under its own time limit, so the phase takes about as long as
# its slowest job; the jobs share the machine's cores and the GPU.
JOB_DIR=$(mktemp -d /tmp/cs-jobs.XXXXXX)
trap 'rm -rf "$JOB_DIR"' EXIT
JOBS=()  # "STEP|NAME|LIMIT|LOG|ID" of each job started and not yet collected

start_job() {  # start_job STEP NAME LIMIT LOG CMD...  (NAME may be empty)
  local step=$1 name=$2 limit=$3 log=$4 id=${#JOBS[@]}
  shift 4
  JOBS+=("$step|$name|$limit|$log|$id")
  (
    t0=$(date +%s)
    echo "--- ${step}${name:+[$name]}: $*" >"$JOB_DIR/$id.log"
    timeout --kill-after=15 "$limit" "$@" >>"$JOB_DIR/$id.log" 2>&1
    echo $? >"$JOB_DIR/$id.rc"
    echo $(($(date +%s) - t0)) >"$JOB_DIR/$id.sec"
  ) &
}

start_shards() {  # start_shards STEP LIMIT LOG EXTRA CMD...: one job per shard, CMD -# FILTER
  local step=$1 limit=$2 log=$3 extra=$4 spec
  shift 4
  echo "=== $step: $* -# FILTER, $(shards "$extra" | wc -l) shards (limit ${limit}s each)" | tee -a "$OUT/$log"
  while IFS= read -r spec; do
    start_job "$step" "${spec%%=*}" "$limit" "$log" "$@" -# "${spec#*=}"
  done < <(shards "$extra")
}

collect_jobs() {
  local job step name limit log id rc secs status row
  wait
  for job in "${JOBS[@]}"; do
    IFS='|' read -r step name limit log id <<<"$job"
    rc=$(cat "$JOB_DIR/$id.rc" 2>/dev/null || echo 1)
    secs=$(cat "$JOB_DIR/$id.sec" 2>/dev/null || echo "?")
    status=$(status_of "$rc" "$limit")
    [ "$rc" -ne 0 ] && FAILED=1
    row=${step}${name:+[$name]}
    tee -a "$OUT/$log" <"$JOB_DIR/$id.log"
    echo "=== $row: $status (${secs}s)" | tee -a "$OUT/$log"
    NAMES+=("$row")
    RESULTS+=("$status")
    SECONDS_TAKEN+=("$secs")
  done
  JOBS=()
  echo "=== background jobs collected at $(date -u +%H:%M:%S) UTC" | tee -a "$OUT/$LOG"
}

skip_step() {
  NAMES+=("$1")
  RESULTS+=("skipped: $2")
  SECONDS_TAKEN+=("0")
}

# ---------------------------------------------------------------- 1. setup
LOG=gpu_check.log
: >"$OUT/$LOG"
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "commit: $(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)"
  nvidia-smi || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
  command -v nvcc >/dev/null && nvcc --version | tail -2
} 2>&1 | tee -a "$OUT/$LOG"

NV=$(python3 -c "import nvidia; print(list(nvidia.__path__)[0])" 2>/dev/null || true)
if [ -n "$NV" ] && [ -d "$NV" ]; then
  for lib in "$NV"/*/lib; do
    [ -d "$lib" ] && LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  export LD_LIBRARY_PATH
  echo "python nvidia wheels: $NV" | tee -a "$OUT/$LOG"
fi
echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" | tee -a "$OUT/$LOG"
{
  echo "library versions:"
  python3 -m pip list 2>/dev/null | grep -Ei '^nvidia-(cudnn|cublas|curand|cuda-runtime)' || true
  for h in "${NV:-/nonexistent}"/cudnn/include/cudnn_version.h /usr/local/cuda/include/cudnn_version.h \
           /usr/include/cudnn_version.h /usr/include/x86_64-linux-gnu/cudnn_version.h; do
    if [ -f "$h" ]; then
      echo "  $h: cuDNN $(awk '/#define CUDNN_MAJOR /{a=$3} /#define CUDNN_MINOR /{b=$3} /#define CUDNN_PATCHLEVEL /{c=$3} END{print a"."b"."c}' "$h")"
    fi
  done
  LDP=${LD_LIBRARY_PATH:-}
  for d in ${LDP//:/ } /usr/local/cuda/lib64 /usr/local/cuda/lib; do
    for f in "$d"/libcudnn.so.* "$d"/libcublas.so.* "$d"/libcurand.so.*; do
      [ -e "$f" ] && echo "  $f"
    done
  done | sort -u
} 2>&1 | tee -a "$OUT/$LOG"

BUILD=${BUILD_DIR:-}
if [ -z "$BUILD" ]; then
  if [ -x build/cs_gpu_tests ] && [ -x build/kernel_bench ] && [ -x build/speedrun ]; then
    BUILD=build
  else
    BUILD=build-gpu
  fi
fi
if [ -x "$BUILD/cs_gpu_tests" ] && [ -x "$BUILD/kernel_bench" ] && [ -x "$BUILD/speedrun" ]; then
  echo "using prebuilt binaries in $BUILD" | tee -a "$OUT/$LOG"
  skip_step build "prebuilt $BUILD"
else
  CMAKE_ARGS=(-S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release)
  [ -n "$NV" ] && [ -d "$NV/cudnn" ] && CMAKE_ARGS+=(-DCUDNN_ROOT="$NV/cudnn")
  [ -n "${CUDA_ARCHS:-}" ] && CMAKE_ARGS+=(-DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCHS")
  run_step build "$T_BUILD" "$LOG" bash -c \
    "cmake $(printf '%q ' "${CMAKE_ARGS[@]}") && ninja -C $(printf '%q' "$BUILD") cs_gpu_tests kernel_bench conv_bench speedrun reference_dump"
fi

# The commit the binaries were built from (the checkout's git metadata on a device machine can
# be older than the files it carries: the H100 run of 948e5f6's binaries logged c68fdac above).
[ -x "$BUILD/speedrun" ] && echo "binaries: $("$BUILD/speedrun" --version 2>&1)" | tee -a "$OUT/$LOG"

# ---------------------------------------------------------------- 2. GPU tests, sanitizer
if want gpu_tests || want probes; then : >"$OUT/gpu_tests.log"; fi
# The probes first, one process each and one after the other: a TMA copy that faults (or never
# completes, and traps) leaves its process's CUDA context unusable, so each runs alone, before
# the shards share the GPU.
if ! want probes; then
  skip_step probes "not in GPU_CHECK_STEPS"
elif [ ! -x "$BUILD/cs_gpu_tests" ]; then
  skip_step probes "no $BUILD/cs_gpu_tests"
else
  IFS=';' read -r -a PROBE_LIST <<<"${PROBES:-[tma];[tma_halo];[tma_small4];[tma_small3];[tma_small2];[tma_small1];[halo];[halo_mn]}"
  for filter in "${PROBE_LIST[@]}"; do
    run_step "probe$filter" "$T_PROBE" gpu_tests.log "$BUILD/cs_gpu_tests" "$filter" --durations yes
  done
fi
if ! want gpu_tests; then
  skip_step gpu_tests "not in GPU_CHECK_STEPS"
elif [ ! -x "$BUILD/cs_gpu_tests" ]; then
  skip_step gpu_tests "no $BUILD/cs_gpu_tests"
elif [ -f "$BUILD/CTestTestfile.cmake" ] && grep -q "$ROOT/" "$BUILD/CTestTestfile.cmake" &&
     command -v ctest >/dev/null; then
  echo "=== gpu_tests: ctest -L gpu --parallel 4 (limit ${T_TESTS}s)" | tee -a "$OUT/gpu_tests.log"
  start_job gpu_tests "" "$T_TESTS" gpu_tests.log ctest --test-dir "$BUILD" -L gpu --output-on-failure --parallel 4
else
  start_shards gpu_tests "$T_TESTS" gpu_tests.log "" "$BUILD/cs_gpu_tests" --durations yes
fi

SANITIZER=$(command -v compute-sanitizer || true)
for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
  [ -z "$SANITIZER" ] && [ -x "$c" ] && SANITIZER=$c
done
want sanitizer && : >"$OUT/sanitizer.log"
SANITIZER_SKIP=""  # why the sanitizer step is skipped; its row follows the GPU tests' rows
if ! want sanitizer; then
  SANITIZER_SKIP="not in GPU_CHECK_STEPS"
elif [ ! -x "$BUILD/cs_gpu_tests" ]; then
  SANITIZER_SKIP="no $BUILD/cs_gpu_tests"
elif [ -z "$SANITIZER" ]; then
  echo "compute-sanitizer not found" | tee -a "$OUT/sanitizer.log"
  SANITIZER_SKIP="compute-sanitizer not found"
else
  # CS_TEST_QUICK_AUTOTUNE: the engine's setup in the tests skips cuDNN's find and times each
  # candidate by one call (tests/gpu_test_util.h): under the sanitizer every launch is
  # instrumented and each timed candidate costs 10 to 40 calls (the first memcheck run hit its
  # limit inside the first whole-step test, after the conv-selection tests).
  start_shards sanitizer "$T_SANITIZER" sanitizer.log "~[recipe]" \
    env CS_TEST_QUICK_AUTOTUNE=1 "$SANITIZER" --tool memcheck --report-api-errors no --error-exitcode 1 \
    "$BUILD/cs_gpu_tests" --durations yes
  echo "=== racecheck: [igemm]~[recipe] (limit ${T_RACECHECK}s)" | tee -a "$OUT/sanitizer.log"
  start_job racecheck "" "$T_RACECHECK" sanitizer.log \
    env CS_TEST_QUICK_AUTOTUNE=1 "$SANITIZER" --tool racecheck --racecheck-report all --error-exitcode 1 \
    "$BUILD/cs_gpu_tests" "[igemm]~[recipe]" --durations yes
fi
collect_jobs
[ -n "$SANITIZER_SKIP" ] && skip_step sanitizer "$SANITIZER_SKIP"

# ---------------------------------------------------------------- 3. kernel bench
if ! want kernel_bench; then
  skip_step kernel_bench "not in GPU_CHECK_STEPS"
elif [ -x "$BUILD/kernel_bench" ]; then
  run_step kernel_bench "$T_BENCH" "$LOG" "$BUILD/kernel_bench" --json "$OUT/kernel_bench.json"
else
  skip_step kernel_bench "no $BUILD/kernel_bench"
fi

# ---------------------------------------------------------------- 4. conv bench
if ! want conv_bench; then
  skip_step conv_bench "not in GPU_CHECK_STEPS"
elif [ -x "$BUILD/conv_bench" ]; then
  # shellcheck disable=SC2086  # CONV_BENCH_ARGS: words for conv_bench (e.g. --configs A,B --layers L)
  run_step conv_bench "$T_CONV_BENCH" "$LOG" "$BUILD/conv_bench" ${CONV_BENCH_ARGS:-} --json "$OUT/conv_bench.json"
else
  skip_step conv_bench "no $BUILD/conv_bench"
fi

# ---------------------------------------------------------------- 5. speedrun
# ensure_bins: when DATA is the repo's compressed pack (a folder with build_bins.py), rebuild
# the official binary files once (checked against SHA256SUMS) and point DATA at them.
ensure_bins() {
  if [ -f "$DATA/build_bins.py" ] && [ ! -d "$DATA/cifar-10-batches-bin" ]; then
    run_step unpack_data 120 "$LOG" python3 "$DATA/build_bins.py" /tmp/cifar10-bins "$DATA"
    DATA=/tmp/cifar10-bins
  fi
}

if ! want speedrun; then
  skip_step speedrun "not in GPU_CHECK_STEPS"
elif [ -z "$DATA" ]; then
  skip_step speedrun "no DATA_DIR argument or CIFAR10_DIR"
elif [ ! -x "$BUILD/speedrun" ]; then
  skip_step speedrun "no $BUILD/speedrun"
else
  ensure_bins
  run_step speedrun "$T_SPEEDRUN" "$LOG" \
    "$BUILD/speedrun" --device cuda --data "$DATA" --runs "$RUNS" --json "$OUT/speedrun.json" \
    ${SPEEDRUN_ARGS:-}
fi

# ---------------------------------------------------------------- 6. PyTorch reference
if ! want torch; then
  skip_step torch "not in GPU_CHECK_STEPS"
elif [ -z "$DATA" ]; then
  skip_step torch "no DATA_DIR argument or CIFAR10_DIR"
elif ! python3 -c "import torch, numpy" >/dev/null 2>&1; then
  skip_step torch "python3 cannot import torch and numpy"
else
  ensure_bins
  run_step torch "$T_TORCH" "$LOG" \
    env PYTHONUNBUFFERED=1 python3 tools/reference/resnet9_torch.py train --data "$DATA" --runs "$TORCH_RUNS" \
    --time-budget "$((T_TORCH - 60))" --json "$OUT/torch.json"
fi

# ---------------------------------------------------------------- 7. GPU step vs PyTorch
if ! want crosscheck; then
  skip_step crosscheck "not in GPU_CHECK_STEPS"
elif [ ! -x "$BUILD/reference_dump" ]; then
  skip_step crosscheck "no $BUILD/reference_dump"
elif ! python3 -c "import torch, numpy" >/dev/null 2>&1; then
  skip_step crosscheck "python3 cannot import torch and numpy"
else
  XDUMP=$(mktemp -d /tmp/cs-crosscheck.XXXXXX)
  run_step crosscheck "$T_CROSSCHECK" "$LOG" bash -c \
    "$(printf '%q' "$BUILD/reference_dump") --out $(printf '%q' "$XDUMP") --gpu --width 1 --batch 64 \
       --bn-group 32 --steps 1 --test-images 64 &&
     python3 tools/reference/resnet9_torch.py compare --dump $(printf '%q' "$XDUMP") --device cuda"
  rm -rf "$XDUMP"
fi

# ---------------------------------------------------------------- 8. engine variants
if ! want variants; then
  skip_step variants "not in GPU_CHECK_STEPS"
elif [ -z "$DATA" ]; then
  skip_step variants "no DATA_DIR argument or CIFAR10_DIR"
elif [ ! -x "$BUILD/speedrun" ]; then
  skip_step variants "no $BUILD/speedrun"
else
  ensure_bins
  IFS=';' read -r -a VARIANTS <<<"${SPEEDRUN_VARIANTS:-cudnn=;auto=--conv-kernels auto;fused=--conv-kernels auto --fusions all;fused_auto=--conv-kernels auto --fusions auto}"
  for variant in "${VARIANTS[@]}"; do
    vname=${variant%%=*}
    vargs=${variant#*=}
    if [[ ! "$vname" =~ ^[A-Za-z0-9_]+$ || "$variant" != *=* ]]; then
      echo "=== variant: FAIL: '$variant' is not NAME=ARGS with NAME a word" | tee -a "$OUT/$LOG"
      NAMES+=("variant[$vname]")
      RESULTS+=("FAIL: not NAME=ARGS, NAME a word")
      SECONDS_TAKEN+=("0")
      FAILED=1
      continue
    fi
    # shellcheck disable=SC2086  # ARGS split into words on purpose
    run_step "variant[$vname]" "$T_SPEEDRUN" "$LOG" \
      "$BUILD/speedrun" --device cuda --data "$DATA" --runs "${VARIANT_RUNS:-5}" \
      --json "$OUT/speedrun_$vname.json" $vargs
  done
fi

# ---------------------------------------------------------------- 9. profile
NCU=$(command -v ncu || true)
for c in /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu; do
  [ -z "$NCU" ] && [ -x "$c" ] && NCU=$c
done
if ! want profile; then
  skip_step profile "not in GPU_CHECK_STEPS"
elif [ ! -x "$BUILD/conv_bench" ]; then
  skip_step profile "no $BUILD/conv_bench"
elif [ -z "$NCU" ]; then
  skip_step profile "ncu not found"
else
  # ncu's demangled names spell template arguments as "(int)128", enumerators as "(Enum)0".
  I='\(int\)'
  # The forward tiles: conv_bench's statistics loop launches each config's plain kernel once, in
  # config order, before any is timed, so the first four matches are four different kernels:
  # _s3, _s4_pp_im2col (the fastest of ours on the H200), _s5_pp_im2col and _s6_pp_im2col
  # (session 10 profiled the others: docs/results/2026-11-27-h200-session10/call2).
  DEFAULT_PROFILES="fwd_layer1#layer1#conv_fwd_wgmma(_pp)?_kernel<.*WgTile<${I}128, ${I}128, ${I}(0, ${I}3, ${I}0|1, ${I}[456], ${I}4), ${I}0>, .*Epilogue\\)0>#4#full"
  # The 7-stage tile: an item of its own (its first launch is its plain kernel, in that loop).
  DEFAULT_PROFILES+=";fwd_layer1_s7#layer1#conv_fwd_wgmma_pp_kernel<.*WgTile<${I}128, ${I}128, ${I}1, ${I}7, ${I}4, ${I}0>#1#full"
  # The halo tile's forward (its own kernel), for the barrier waits and tensor-pipe use against
  # the im2col tiles'.
  DEFAULT_PROFILES+=";fwd_layer1_halo#layer1#conv_fwd_wgmma_halo_kernel<.*HaloTile<${I}128, ${I}5>#1#full"
  DEFAULT_PROFILES+=";fwd_layer1_halo10#layer1#conv_fwd_wgmma_halo_kernel<.*HaloTile<${I}128, ${I}10>#1#full"
  # The weight-gradient tiles run back to back, each many times: one ncu run per tile (a count
  # of two over several tiles profiled the first tile twice). The im2col tile at 7 stages
  # (session 10 profiled it at 4 stages, and the cp.async ping-pong one:
  # docs/results/2026-11-27-h200-session10/call2).
  DEFAULT_PROFILES+=";wgrad_layer2_s7#layer2#conv_wgrad_wgmma_pp_kernel<.*WgWgradTile<${I}128, ${I}128, ${I}1, ${I}7, ${I}4, ${I}0>#1#full"
  # The cooperative tiles: the 256 x 128 forward on layer1, the 128 x 256 weight gradient.
  DEFAULT_PROFILES+=";fwd_layer1_coop#layer1#conv_fwd_wgmma_pp_kernel<.*WgTile<${I}256, ${I}128, ${I}1, ${I}4, ${I}8, ${I}0>#1#full"
  DEFAULT_PROFILES+=";wgrad_layer2_coop#layer2#conv_wgrad_wgmma_pp_kernel<.*WgWgradTile<${I}128, ${I}256, ${I}1, ${I}4, ${I}8, ${I}0>#1#full"
  # cuDNN's Hopper forward (layer1 launches one sm90_xmma_fprop kernel, autotune included).
  DEFAULT_PROFILES+=";cudnn_fwd_layer1#layer1#sm90_xmma_fprop#1#full"
  IFS=';' read -r -a PROFILES <<<"${PROFILE_SPECS:-$DEFAULT_PROFILES}"
  for spec in "${PROFILES[@]}"; do
    IFS='#' read -r pname players pregex pcount pset <<<"$spec"
    if [ "$pset" = full ]; then
      NCU_WHAT=(--section SpeedOfLight --section LaunchStats --section Occupancy --section WarpStateStats
                --section SchedulerStats --section ComputeWorkloadAnalysis --section MemoryWorkloadAnalysis
                --section SourceCounters)
    else
      NCU_WHAT=(--section SpeedOfLight --section LaunchStats)
    fi
    run_step "profile[$pname]" "${T_PROFILE:-120}" "ncu_$pname.txt" \
      "$NCU" --clock-control none --kernel-name-base demangled -k "regex:$pregex" -c "$pcount" "${NCU_WHAT[@]}" \
      "$BUILD/conv_bench" --layers "$players" --iters 1
  done
fi

# ---------------------------------------------------------------- summary
{
  echo
  printf '%-20s %-40s %s\n' step result seconds
  for i in "${!NAMES[@]}"; do
    printf '%-20s %-40s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}" "${SECONDS_TAKEN[$i]}"
  done
  if [ $FAILED -ne 0 ]; then echo "gpu_check: FAILED"; else echo "gpu_check: all steps passed"; fi
} | tee -a "$OUT/$LOG"
exit $FAILED
