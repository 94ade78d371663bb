#!/usr/bin/env bash
# All GPU checking in one command, on a machine with a GPU and no network (it uses the machine's own torch):
# builds the extension, runs the `gpu` tests, runs every benchmark, and writes JSON + a markdown table under
# bench/results/ named by date and GPU. Measured on H100 and H200 machines (16 cores): build 34 to 52 s, gpu tests 1
# to 3 min, op benchmarks a few minutes, and per training case 1 to 8 minutes, most of it torch.compile's first step
# (DG-Net b8: 127 s once, since then more compiled and past 220-230 s three times; its three whole-step graphs,
# not yet compiled on a GPU, took 409 s on a 2-core CPU against 380 s for the graphs per network: give it
# REIDFAST_TRAIN_TIMEOUT=500 alone; SA-GAN: 147 s with its two whole-step
# graphs, the case 198 s in all; FD-GAN stage III: 184 s, the reference and reidfast rows 230 s): everything at once takes
# well over 15 minutes, so select suites, cases and configurations with the variables below to fit a time budget.
# Usage: scripts/gpu_check.sh [RESULTS_DIR]
#   (A session's device tool brings back at most 8 files: write RESULTS_DIR outside its $OUT and archive it there,
#   scripts/gpu_check.sh /tmp/r; tar czf $OUT/r.tgz -C /tmp r. Profiles alone are a file per configuration.
#   To skip the build there (95 s on a fresh H200), build here with that machine's Python and torch, 3.12 and
#   2.11.0+cu130 in 2026-11, and name the .so in the tool's carry: the script checks that it matches.)
#   REIDFAST_GPU_TESTS="tests/ops"                   the test paths whose `gpu` tests run (default tests; took
#                                                     176 s on an H100, tests/ops 110 s, before the compiled FD-GAN
#                                                     test, a minute or two more; the slowest 15 are listed in the
#                                                     log; 420 s at most); none: no tests (a benchmark-only call)
#   REIDFAST_BENCH_ONLY=adain,rank,homography,train   the benchmark suites (default all; none: a tests-only call)
#   REIDFAST_TRAIN_CASES="dgnet fdgan"                the training-iteration cases (default every case of
#                                                     bench/train_step.py); each runs alone under its own timeout
#                                                     (REIDFAST_TRAIN_TIMEOUT, 300 s: FD-GAN's first compiled
#                                                     step took 184 s on an H100) and writes its own result
#                                                     files, rewritten after every row: a compile that runs past
#                                                     the limit costs that case's compiled row only
#                                                     (CASE:CONFIGS, e.g. sagan:reference,cudagraphs, gives
#                                                     one case its own configurations)
#   REIDFAST_TRAIN_CONFIGS="reidfast"               the training configurations (default reference,no-compile,
#                                                     reidfast; the speedups need the reference; also
#                                                     cudagraphs: reidfast under CUDA graphs)
#   REIDFAST_TRAIN_PROFILE=1                          also profile 3 steps of each configuration and write the ops
#                                                     and kernels by self time under RESULTS_DIR/DATE_GPU.profile/
#   REIDFAST_BENCH_QUICK=1                            op benchmarks with bench/run.py --quick: one shape per suite
#                                                     and 5 repeats (homography and rank took 52 s instead of 156 s
#                                                     on an H100); the rank suite keeps both scales, homography
#                                                     adds SA-GAN's call (16x4x256x128) since 11-28
#   TEARDOWN_CUPTI=0                                  keep CUPTI attached after each profile (bench/timing.py sets 1,
#                                                     so that later rows' launches do not pay its callbacks)
#   REIDFAST_INDUCTOR_CACHE_IN=DIR                    before anything compiles, restore torch.compile's graphs from
#                                                     the parts in DIR (an earlier run's _OUT, carried: name DIR in
#                                                     the device tool's carry), so that the graphs that match are
#                                                     loaded instead of compiled (scripts/inductor_cache.py)
#   REIDFAST_INDUCTOR_CACHE_OUT=DIR                   at the end, write the graphs compiled or restored here as parts
#                                                     of at most 15 MiB (52 MiB in all; $OUT/DIR brings them back),
#                                                     also after a case that ran out of time: each graph is cached
#                                                     when it finishes. Either variable sets TORCHINDUCTOR_CACHE_DIR
#                                                     to a folder of its own unless it is set. (The carried .so fits
#                                                     beside them once stripped: strip --strip-debug, 30 -> 5.6 MB,
#                                                     its digest kept; 7.1 MB since 11-28's added kernels.)
#   REIDFAST_GPU_CHECK_BUDGET=540                     the script's wall-clock seconds (say, the device call's limit
#                                                     less a minute for archiving the results): each step after the
#                                                     build runs under a timeout cut to end 30 s before the budget
#                                                     does (time to pack the compiled graphs), and a step left with
#                                                     under 60 s is skipped and named, so that a list of cases takes
#                                                     what fits instead of being killed mid-way by the caller
set -uo pipefail
budget_end=""
if [ -n "${REIDFAST_GPU_CHECK_BUDGET:-}" ]; then
  [[ "$REIDFAST_GPU_CHECK_BUDGET" =~ ^[0-9]+$ ]] \
    || { echo "REIDFAST_GPU_CHECK_BUDGET: expected whole seconds, got '$REIDFAST_GPU_CHECK_BUDGET'"; exit 2; }
  budget_end=$(( $(date +%s) + REIDFAST_GPU_CHECK_BUDGET ))
fi
# step_limit SECONDS: the timeout a step gets, SECONDS cut to what the budget leaves; 0 when under 60 s are left
step_limit() {
  [ -z "$budget_end" ] && { echo "$1"; return; }
  local left=$(( budget_end - $(date +%s) - 30 ))
  if [ "$left" -lt 60 ]; then echo 0; elif [ "$left" -lt "$1" ]; then echo "$left"; else echo "$1"; fi
}
cd "$(dirname "$0")/.."
results=${1:-bench/results}
mkdir -p "$results"
export PYTHONUNBUFFERED=1 REIDFAST_CUDA=1 MAX_JOBS=${MAX_JOBS:-16}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$(python -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')}
gpu=$(python -c 'import torch; print(torch.cuda.get_device_name().replace(" ", "-"))')
stem="$results/$(date +%Y-%m-%d)_${gpu}"
status=0

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -n "${REIDFAST_INDUCTOR_CACHE_IN:-}${REIDFAST_INDUCTOR_CACHE_OUT:-}" ]; then
  export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/reidfast-inductor-cache}
  if [ -n "${REIDFAST_INDUCTOR_CACHE_IN:-}" ]; then
    python scripts/inductor_cache.py unpack "$REIDFAST_INDUCTOR_CACHE_IN" "$TORCHINDUCTOR_CACHE_DIR" \
      || echo "   (compiling from nothing)"
  fi
fi
SECONDS=0
# A build carried from the developer's machine (the device tool's carry: reidfast/_C*.so) is reused when it was
# compiled from these sources, against this torch, with this GPU's arch; anything else is built here.
sources=$(python setup.py --print-sources-hash 2>/dev/null)
if python -c '
import sys, torch
from reidfast.ops import _extension as ext
cap = "%d.%d" % torch.cuda.get_device_capability()
archs = [a.replace("+PTX", "") for a in ext.cuda_archs().split(";")]
ok = ext.has_cuda_kernels() and ext.built_against() == torch.__version__ and ext.sources_hash() in sys.argv[1:]
sys.exit(0 if ok and cap in archs else 1)' $sources 2>/dev/null; then  # (no digest printed: no argument, a build)
  echo "== build: reusing the carried reidfast._C (sources $sources)"
else
  echo "== build (TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST)"
  python setup.py build_ext --inplace > "$stem.build.log" 2>&1 \
    || { tail -50 "$stem.build.log"; echo "BUILD FAILED"; exit 1; }
  echo "   built in ${SECONDS}s"
fi
python -m reidfast.info | tee "$stem.info.txt"

limit=$(step_limit 420)
if [ "${REIDFAST_GPU_TESTS:-tests}" != none ] && [ "$limit" -eq 0 ]; then
  echo "== gpu tests: SKIPPED, the time budget is spent"
elif [ "${REIDFAST_GPU_TESTS:-tests}" != none ]; then
  echo "== gpu tests"
  SECONDS=0
  timeout "$limit" python -m pytest -q -m gpu -p no:cacheprovider --durations=15 ${REIDFAST_GPU_TESTS:-tests} 2>&1 | tee "$stem.tests.log" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "GPU TESTS FAILED"; status=1; }
  echo "   tests in ${SECONDS}s"
fi

only=${REIDFAST_BENCH_ONLY:-adain,rank,homography,train}
[ "$only" = none ] && only=""  # a tests-only call
op_suites=$(echo "$only" | tr ',' '\n' | grep -v '^train$' | paste -sd, -)
limit=$(step_limit 300)
if [ -n "$op_suites" ] && [ "$limit" -eq 0 ]; then
  echo "== op benchmarks ($op_suites): SKIPPED, the time budget is spent"
elif [ -n "$op_suites" ]; then
  echo "== op benchmarks ($op_suites)"
  SECONDS=0
  quick=()
  [ "${REIDFAST_BENCH_QUICK:-0}" = 1 ] && quick=(--quick)
  timeout "$limit" python bench/run.py --device cuda --only "$op_suites" "${quick[@]}" --out "$stem.json" 2>&1 | tee "$stem.bench.log"
  [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "OP BENCHMARKS FAILED"; status=1; }
  echo "   op benchmarks in ${SECONDS}s"
fi
if echo "$only" | tr ',' '\n' | grep -qx train; then
  cases=${REIDFAST_TRAIN_CASES:-$(python -c 'import sys; sys.path.insert(0, "bench"); import train_step; print(" ".join(train_step.CASES))')}
  for entry in $cases; do
    case=${entry%%:*}  # CASE or CASE:CONFIGS (this case's configurations)
    configs=${REIDFAST_TRAIN_CONFIGS:-reference,no-compile,reidfast}
    [ "$entry" != "$case" ] && configs=${entry#*:}
    limit=$(step_limit "${REIDFAST_TRAIN_TIMEOUT:-300}")
    if [ "$limit" -eq 0 ]; then
      echo "== training iterations: $case ($configs): SKIPPED, the time budget is spent"
      continue
    fi
    echo "== training iterations: $case ($configs), at most ${limit}s"
    SECONDS=0
    profile=()
    [ "${REIDFAST_TRAIN_PROFILE:-0}" = 1 ] && profile=(--profile "$stem.profile")
    timeout "$limit" python bench/train_step.py --device cuda --method "$case" \
      --configs "$configs" --out "$stem.train-$case.json" "${profile[@]}" 2>&1 | tee "$stem.train-$case.log"
    rc=${PIPESTATUS[0]}
    if [ "$rc" -ne 0 ] && [ -s "$stem.train-$case.json" ]; then
      # the rows measured before the timeout are in the files (also seen once on an H100: every row written, then
      # the process did not exit before the timeout)
      echo "   $case: exited with $rc (timed out?); the rows measured before it are in $stem.train-$case.md"
    elif [ "$rc" -ne 0 ]; then
      echo "TRAINING BENCHMARK $case FAILED (or timed out)"; status=1
    fi
    echo "   $case in ${SECONDS}s"
  done
fi
if [ -n "${REIDFAST_INDUCTOR_CACHE_OUT:-}" ]; then
  python scripts/inductor_cache.py pack "$TORCHINDUCTOR_CACHE_DIR" "$REIDFAST_INDUCTOR_CACHE_OUT"
fi
echo "results: $stem.*"
exit $status
