#!/bin/sh
# gpu-check.sh — configure, build and test mxc with the CUDA backend on a
# machine with an NVIDIA GPU, then print a short table.
#
#   scripts/gpu-check.sh [build-dir]      (default /tmp/mxc-gpu-build)
#
# Logs go to $OUT when set (else <build-dir>/logs).
#
# Release build, -j16, then test_ops, test_cuda and test_core with
# MXC_DATA_DIR unset (plus test_cuda_models, test_cuda_reduce,
# test_async_eval), then bench_cuda_kernels (printed after the table;
# BENCH=0 skips it; TESTS=0 skips the tests; LLM_BENCH=1 adds bench/run-gpu.sh's decode/prefill
# table against PyTorch). GPU machines may lack the -dev packages mxc needs
# (openblas, cjson, utf8proc, zlib, yaml, pkg-config): when pkg-config cannot find
# them and build-deps/*.deb exist (fetch them here with `apt-get download`,
# see docs/cuda.md), they are unpacked under /tmp/mxc-deps and used from
# there. Extra cmake arguments: MXC_CMAKE_ARGS.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-/tmp/mxc-gpu-build}
LOG=${OUT:-$B/logs}
mkdir -p "$B" "$LOG"
unset MXC_DATA_DIR
JOBS=${JOBS:-16}

{
  echo "== device"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -4
  nvcc --version 2>&1 | tail -1
  . /etc/os-release 2>/dev/null && echo "os: ${PRETTY_NAME:-?}"
} | tee "$LOG/device.txt"

PKGCFG=""
if ! pkg-config --exists openblas libcjson libutf8proc zlib yaml-0.1 2>/dev/null; then
  if ls "$ROOT"/build-deps/*.deb >/dev/null 2>&1; then
    P=/tmp/mxc-deps
    echo "== deps: unpacking build-deps/*.deb into $P"
    mkdir -p $P
    for f in "$ROOT"/build-deps/*.deb; do dpkg -x "$f" $P; done
    A=$P/usr/lib/x86_64-linux-gnu
    export LD_LIBRARY_PATH="$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export PKG_CONFIG_SYSROOT_DIR=$P
    export PKG_CONFIG_LIBDIR="$A/pkgconfig:$A/openblas-pthread/pkgconfig:$P/usr/share/pkgconfig"
    if command -v pkg-config >/dev/null 2>&1; then PKGCFG=$(command -v pkg-config)
    else PKGCFG=$P/usr/bin/pkgconf; fi
  else
    echo "== deps: pkg-config does not find openblas/cjson/utf8proc/zlib/yaml and build-deps/ is empty"
  fi
fi

echo "== configure + build"
set -- -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DMXC_CUDA=ON -DMXC_BUILD_BENCH=OFF
[ -n "$PKGCFG" ] && set -- "$@" -DPKG_CONFIG_EXECUTABLE="$PKGCFG"
# shellcheck disable=SC2086
cmake "$@" ${MXC_CMAKE_ARGS:-} >"$LOG/configure.log" 2>&1
CFG=$?
BUILD=1
if [ $CFG = 0 ]; then
  cmake --build "$B" -j"$JOBS" >"$LOG/build.log" 2>&1
  BUILD=$?
fi
[ $CFG = 0 ] || tail -20 "$LOG/configure.log"
[ $BUILD = 0 ] || grep -E "error|Error" "$LOG/build.log" | head -30

run_test() { # name seconds -> status; output in $LOG/<name>.log
  if [ ! -x "$B/$1" ]; then echo "not built" >"$LOG/$1.log"; return 127; fi
  (cd "$ROOT" && timeout "$2" "$B/$1") >"$LOG/$1.log" 2>&1
}
RES=""
TESTS_LIST="test_cuda:120 test_ops:${OPS_TIMEOUT:-300} test_fast:120 test_core:120 test_cuda_models:180 test_cuda_reduce:60 test_async_eval:60"
[ "${TESTS:-1}" = 0 ] && TESTS_LIST=""
for t in $TESTS_LIST; do
  n=${t%%:*}
  if [ $BUILD = 0 ]; then run_test "$n" "${t##*:}"; s=$?; else s=127; fi
  RES="$RES $n:$s"
done

# Benchmark of the LLM kernels (bench/bench_cuda_kernels.c): the same build
# directory reconfigured with benchmarks on, only that target built.
# BENCH=0 skips it.
BENCH_ST=skipped
if [ $BUILD = 0 ] && [ "${BENCH:-1}" != 0 ]; then
  if cmake -B "$B" -DMXC_BUILD_BENCH=ON >>"$LOG/configure.log" 2>&1 &&
     cmake --build "$B" -j"$JOBS" --target bench_cuda_kernels >>"$LOG/build.log" 2>&1; then
    (cd "$ROOT" && timeout "${BENCH_TIMEOUT:-300}" "$B/bench_cuda_kernels") \
      >"$LOG/bench_cuda_kernels.log" 2>&1
    s=$?
    BENCH_ST=$([ $s = 0 ] && echo ok || echo "FAILED($s)")
  else
    BENCH_ST="FAILED(build)"
  fi
fi

echo
echo "== summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1))"
printf '%-12s %s\n' step result
printf '%-12s %s\n' configure "$([ $CFG = 0 ] && echo ok || echo FAILED)"
printf '%-12s %s\n' build "$([ $BUILD = 0 ] && echo ok || echo FAILED)"
for r in $RES; do
  n=${r%%:*}; s=${r##*:}
  line=$(grep -E "passed|failed" "$LOG/$n.log" 2>/dev/null | tail -1)
  printf '%-12s %s %s\n' "$n" "$([ "$s" = 0 ] && echo ok || echo "FAILED($s)")" "$line"
done
grep -E "gpu: .* runs|without a CUDA kernel" "$LOG/test_ops.log" 2>/dev/null | sed 's/^ */  /'
printf '%-12s %s\n' bench "$BENCH_ST"
if [ -s "$LOG/bench_cuda_kernels.log" ]; then echo; cat "$LOG/bench_cuda_kernels.log"; fi
# LLM_BENCH=1: also the end-to-end decode/prefill benchmark against PyTorch
# (bench/run-gpu.sh; needs torch and transformers; PEER_FLAGS as there)
if [ "${LLM_BENCH:-0}" = 1 ] && [ $BUILD = 0 ]; then
  echo
  OUT="$LOG" sh "$ROOT/bench/run-gpu.sh" "$B" 2>&1 | tail -12
fi
echo "logs: $LOG"
