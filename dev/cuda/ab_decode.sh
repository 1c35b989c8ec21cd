#!/bin/sh
# ab_decode.sh — decode rates of two trees in one run on one GPU: this one
# (built by scripts/gpu-check.sh or bench/profile-decode-gpu.sh into
# /tmp/mxc-gpu-build) and an older one (BASE, a source tree, e.g. from
# `git archive REV`), alternating, ROUNDS rounds of `mxc bench --device gpu
# -p 128 -g 256 -n 2` per model (the models bench/run-gpu.sh writes).
#
#   BASE=dir [ROUNDS=2] sh dev/cuda/ab_decode.sh
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${B:-/tmp/mxc-gpu-build}
BB=${BB:-/tmp/mxc-base-build}
W=${WORK:-/tmp/mxc-gpu-bench}
: "${BASE:?BASE=source tree of the older version}"
if [ -d /tmp/mxc-deps ]; then
  P=/tmp/mxc-deps A=/tmp/mxc-deps/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH="$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_SYSROOT_DIR=$P
  export PKG_CONFIG_LIBDIR="$A/pkgconfig:$A/openblas-pthread/pkgconfig:$P/usr/share/pkgconfig"
fi
cmake -S "$BASE" -B "$BB" -DCMAKE_BUILD_TYPE=Release -DMXC_CUDA=ON -DMXC_BUILD_TESTS=OFF \
  -DMXC_BUILD_BENCH=OFF >/dev/null 2>&1 && cmake --build "$BB" -j16 --target mxc_cli >/dev/null 2>&1 ||
  { echo "base build failed"; exit 1; }
for r in $(seq "${ROUNDS:-2}"); do
  for k in bf16 q4; do
    for t in base new; do
      x=$B/mxc; [ $t = base ] && x=$BB/mxc
      v=$("$x" bench --device gpu --model "$W/l1b-$k" -p 128 -g 256 -n 2 2>&1 | grep Averages |
        sed 's/.*generation_tps=\([0-9.]*\).*/\1/')
      echo "round $r $k $t decode_tps=$v"
    done
  done
done
