#!/bin/sh
# prefill_ab.sh — prefill rate of the 1B-architecture bf16 model with the
# mma.sync flash attention (flash_attn2.cu) and without (MXC_FA2=0), and
# the attention kernels' device times under Nsight Compute.
#
#   dev/cuda/prefill_ab.sh <build-dir>     (after scripts/gpu-check.sh)
# Models are made as bench/run-gpu.sh makes them (WORK, default
# /tmp/mxc-gpu-bench). Output: $OUT (else <build-dir>/ab).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$1
W=${WORK:-/tmp/mxc-gpu-bench}
LOG=${OUT:-$B/ab}
mkdir -p "$W" "$LOG"
[ -f "$W/l1b-bf16/config.json" ] ||
  python3 "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$LOG/make.log" 2>&1
for p in 512 2048; do
  for fa in 1 0; do
    MXC_FA2=$fa "$B/mxc" bench --device gpu --model "$W/l1b-bf16" -p $p -g 1 -n 3 \
      >"$LOG/p$p-fa$fa.log" 2>&1
    printf 'prefill %-5s MXC_FA2=%s %s\n' $p $fa \
      "$(grep Averages "$LOG/p$p-fa$fa.log" | sed 's/.*prompt_tps=\([0-9.]*\).*/\1 tok\/s/')"
  done
done
if command -v ncu >/dev/null 2>&1; then
  for fa in 1 0; do
    MXC_FA2=$fa timeout 120 ncu --metrics gpu__time_duration.sum -k regex:k_fa -c 16 --csv \
      "$B/mxc" bench --device gpu --model "$W/l1b-bf16" -p 2048 -g 1 -n 1 \
      >"$LOG/ncu-fa$fa.csv" 2>/dev/null
    echo "ncu attention kernels, prefill 2048, MXC_FA2=$fa (last 4):"
    grep gpu__time_duration "$LOG/ncu-fa$fa.csv" | tail -4 | awk -F'","' '{print "  " substr($5,1,60) "  " $(NF-1) " " $NF}'
  done
fi
