#!/bin/sh
# knockout.sh — what each kernel of a replayed decode step costs inside the
# step: builds mxc with dev/cuda/knockout.patch applied to a copy of the
# tree (MXC_KO=op1,op2: those ops' CUDA kernels only allocate their output,
# so results are wrong) and prints decode tok/s with each set knocked out.
# Run it through the device tool; the patch never goes into the tree.
#
#   [ROUNDS=2] [MODELS="bf16 q4"] [SETS="none scaled_dot_product_attention ..."] sh dev/cuda/knockout.sh
#
# Makes the 1B benchmark models as bench/run-gpu.sh does.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
T=${WORK:-/tmp/mxc-ko}
B=$T/build
W=${MODELS_DIR:-/tmp/mxc-gpu-bench}
rm -rf "$T/src" && mkdir -p "$T/src" "$W"
# a copy of the tree (no build folders), the patch applied to it
tar -C "$ROOT" --exclude=./.git --exclude='./build*' -cf - . | tar -C "$T/src" -xf -
[ -d "$ROOT/build-deps" ] && cp -r "$ROOT/build-deps" "$T/src/"
(cd "$T/src" && git apply dev/cuda/knockout.patch) || { echo "knockout.patch does not apply"; exit 1; }
OUT=$T/logs BENCH=0 TESTS=0 sh "$T/src/scripts/gpu-check.sh" "$B" >"$T/build.log" 2>&1 || { tail "$T/build.log"; exit 1; }
[ -d /tmp/mxc-deps ] && export LD_LIBRARY_PATH=/tmp/mxc-deps/usr/lib/x86_64-linux-gnu:/tmp/mxc-deps/usr/lib/x86_64-linux-gnu/openblas-pthread
if [ ! -f "$W/l1b-bf16/config.json" ]; then
  python3 "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$W/make.log" 2>&1 || { tail "$W/make.log"; exit 1; }
fi
if [ ! -f "$W/l1b-q4/config.json" ]; then
  "$B/mxc" convert --hf-path "$W/l1b-bf16" --mlx-path "$W/l1b-q4" -q --q-bits 4 \
    --q-group-size 64 >"$W/convert.log" 2>&1 || { tail "$W/convert.log"; exit 1; }
fi
SETS=${SETS:-"none scaled_dot_product_attention rope_kv add_rms_norm swiglu_linear,swiglu matmul argmax"}
for r in $(seq "${ROUNDS:-2}"); do
  for s in $SETS; do
    for m in ${MODELS:-bf16 q4}; do
      ko=$s
      [ "$s" = none ] && ko=
      tps=$(MXC_KO=$ko "$B/mxc" bench --device gpu --model "$W/l1b-$m" -p 128 -g 256 -n 2 2>&1 |
        grep Averages | sed 's/.*generation_tps=\([0-9.]*\).*/\1/')
      echo "round $r $m knocked out: $s decode_tps=$tps"
    done
  done
done
