#!/bin/sh
# Runs the CPU benchmarks and their peers in one go and prints Markdown
# tables (for BENCHMARKS.md). Writes logs under $OUT when set.
#   bench/run-cpu.sh [THREADS]        (default 2)
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
T=${1:-2}
B=${BUILD_DIR:-/tmp/build-bench}
OUT=${OUT:-$B/out}
mkdir -p "$OUT"
# Machines without the -dev packages (e.g. the GPU machine): unpack the
# Debian packages carried in build-deps/ (see docs/cuda.md).
set --
if ! pkg-config --exists openblas libcjson libutf8proc 2>/dev/null && ls "$ROOT"/build-deps/*.deb >/dev/null 2>&1; then
  P=/tmp/mxc-deps
  mkdir -p $P
  for f in "$ROOT"/build-deps/*.deb; do dpkg -x "$f" $P; done
  A=$P/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH="$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_SYSROOT_DIR=$P
  export PKG_CONFIG_LIBDIR="$A/pkgconfig:$A/openblas-pthread/pkgconfig:$P/usr/share/pkgconfig"
  command -v pkg-config >/dev/null 2>&1 || set -- -DPKG_CONFIG_EXECUTABLE=$P/usr/bin/pkgconf
fi
cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DMXC_BUILD_TESTS=OFF -DMXC_CUDA=OFF \
  -DMXC_SOURCE_EXCLUDE="${MXC_SOURCE_EXCLUDE:-}" "$@" >"$OUT/configure.log" 2>&1 || { tail -30 "$OUT/configure.log"; exit 1; }
TARGETS=$(cd "$ROOT/bench" && ls bench_*.c | sed 's/\.c$//' | tr '\n' ' ')
# shellcheck disable=SC2086
cmake --build "$B" -j"$(nproc)" --target $TARGETS >"$OUT/build.log" 2>&1 || { grep -E "error" "$OUT/build.log" | head -30; }
export MXC_NUM_THREADS=$T OPENBLAS_NUM_THREADS=$T OMP_NUM_THREADS=$T
echo "## machine"
{ lscpu | grep -E "Model name|^CPU\(s\)|Thread|L3" ; date -u; } | tee "$OUT/machine.txt"
run() { name=$1; shift; echo; echo "## $name"; "$@" 2>&1 | tee "$OUT/$name.txt"; }
run core "$B/bench_core" 64
run gemm "$B/bench_gemm" 1 "$T"
[ -x "$B/bench_random" ] && run random "$B/bench_random"
[ -x "$B/bench_fast" ] && run fast "$B/bench_fast"
[ -x "$B/bench_quantized" ] && run quantized "$B/bench_quantized"
[ -x "$B/bench_sort" ] && run sort "$B/bench_sort"
[ -x "$B/bench_io" ] && run io "$B/bench_io"
run transforms "$B/bench_transforms" 4 128 256 4 688 10
if python3 -c "import torch" 2>/dev/null; then
  run transforms_torch python3 "$ROOT/bench/peers/torch_transformer_grad.py" 4 128 256 4 688 10
fi
