#!/bin/sh
# profile-decode-gpu.sh — per-kernel device times of the GPU decode step of
# the 1B-architecture benchmark model (bf16 and 4-bit), through Nsight
# Compute, plus the plain `mxc bench` decode rate of the same build.
#
#   bench/profile-decode-gpu.sh [build-dir]   (default /tmp/mxc-gpu-build)
#
# Builds the mxc target only (deps from build-deps/ as scripts/gpu-check.sh),
# writes the models as bench/run-gpu.sh does, then runs
# `ncu --metrics gpu__time_duration.sum` over a short generate (prompt 4,
# 6 tokens: prefill, one step, then replayed graph steps) and writes the raw
# CSV per weight kind to $OUT (else <build-dir>/profile); dev/cuda/
# decode_profile.py summarises it.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-/tmp/mxc-gpu-build}
LOG=${OUT:-$B/profile}
W=${WORK:-/tmp/mxc-gpu-bench}
mkdir -p "$B" "$LOG" "$W"
if ! pkg-config --exists openblas libcjson libutf8proc zlib yaml-0.1 2>/dev/null &&
   ls "$ROOT"/build-deps/*.deb >/dev/null 2>&1; then
  P=/tmp/mxc-deps; mkdir -p $P
  for f in "$ROOT"/build-deps/*.deb; do dpkg -x "$f" $P; done
  A=$P/usr/lib/x86_64-linux-gnu
  export LD_LIBRARY_PATH="$A:$A/openblas-pthread${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  export PKG_CONFIG_SYSROOT_DIR=$P
  export PKG_CONFIG_LIBDIR="$A/pkgconfig:$A/openblas-pthread/pkgconfig:$P/usr/share/pkgconfig"
  PKGCFG=$(command -v pkg-config || echo $P/usr/bin/pkgconf)
  set -- -DPKG_CONFIG_EXECUTABLE="$PKGCFG"
else
  set --
fi
cmake -S "$ROOT" -B "$B" -DCMAKE_BUILD_TYPE=Release -DMXC_CUDA=ON -DMXC_BUILD_BENCH=OFF "$@" \
  >"$LOG/configure.log" 2>&1 || { tail -20 "$LOG/configure.log"; exit 1; }
cmake --build "$B" -j"${JOBS:-16}" --target mxc_cli >"$LOG/build.log" 2>&1 ||
  { grep -E "error" "$LOG/build.log" | head -30; exit 1; }
MXC="$B/mxc"
PY=${PYTHON:-python3}
[ -f "$W/l1b-bf16/config.json" ] || $PY "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" \
  >"$LOG/make.log" 2>&1 || { tail "$LOG/make.log"; exit 1; }
[ -f "$W/l1b-q4/config.json" ] || "$MXC" convert --hf-path "$W/l1b-bf16" --mlx-path "$W/l1b-q4" \
  -q --q-bits 4 --q-group-size 64 >"$LOG/convert.log" 2>&1 || { tail "$LOG/convert.log"; exit 1; }
for k in bf16 q4; do
  "$MXC" bench --device gpu --model "$W/l1b-$k" -p 128 -g 256 -n 2 2>&1 | grep -E "Trial|Averages" |
    sed "s/^/$k: /"
done
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu 2>/dev/null | head -1)
[ -n "$NCU" ] || { echo "no ncu"; exit 0; }
for k in ${PROFILE_KINDS:-bf16 q4}; do
  timeout "${NCU_TIMEOUT:-200}" "$NCU" --clock-control none --metrics gpu__time_duration.sum \
    --csv --print-units base --launch-count "${NCU_COUNT:-3000}" \
    "$MXC" bench --device gpu --model "$W/l1b-$k" -p 4 -g 6 -n 1 >"$LOG/ncu-$k.csv" 2>"$LOG/ncu-$k.err"
  echo "ncu $k: rc $? $(wc -l <"$LOG/ncu-$k.csv") lines"
done
