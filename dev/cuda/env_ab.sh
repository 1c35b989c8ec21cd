#!/bin/sh
# env_ab.sh — decode (and prompt) rates of one build under different values
# of one environment variable, alternating, on one GPU: e.g. MXC_PDL=0/1.
# Makes the 1B benchmark models when missing (as bench/run-gpu.sh does).
#
#   VAR=MXC_PDL VALS="0 1" [ROUNDS=2] [MODELS="bf16 q4"] [P=128 G=256 N=2] sh dev/cuda/env_ab.sh [build-dir]
# (P=2048 G=1 N=3 compares prompt rates)
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=${1:-/tmp/mxc-gpu-build}
W=${WORK:-/tmp/mxc-gpu-bench}
: "${VAR:?VAR=the environment variable}" "${VALS:?VALS=its values}"
mkdir -p "$W"
if [ ! -f "$W/l1b-bf16/config.json" ]; then
  python3 "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$W/make.log" 2>&1 ||
    { tail "$W/make.log"; exit 1; }
fi
if [ ! -f "$W/l1b-q4/config.json" ]; then
  "$B/mxc" convert --hf-path "$W/l1b-bf16" --mlx-path "$W/l1b-q4" -q --q-bits 4 \
    --q-group-size 64 >"$W/convert.log" 2>&1 || { tail "$W/convert.log"; exit 1; }
fi
for r in $(seq "${ROUNDS:-2}"); do
  for k in ${MODELS:-bf16 q4}; do
    for v in $VALS; do
      line=$(env "$VAR=$v" "$B/mxc" bench --device gpu --model "$W/l1b-$k" -p "${P:-128}" -g "${G:-256}" -n "${N:-2}" 2>&1 |
        grep Averages)
      echo "round $r $k $VAR=$v $(echo "$line" | sed 's/.*prompt_tps=\([0-9.]*\), generation_tps=\([0-9.]*\).*/prompt_tps=\1 decode_tps=\2/')"
    done
  done
done
