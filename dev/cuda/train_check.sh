#!/bin/sh
# train_check.sh — GPU training and LoRA throughput next to PyTorch, plus
# op profiles (MXC_PROFILE) of a training step, a LoRA step and a 2048-token
# prefill, summarised into $OUT/{train,lora,profiles}.txt.
#
#   dev/cuda/train_check.sh <build-dir>   (after scripts/gpu-check.sh with
#                                          MXC_CMAKE_ARGS=-DMXC_BUILD_BENCH=ON)
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$1
O=${OUT:-$B/tc}
L=/tmp/mxc-tc
mkdir -p "$O" "$L"
if [ "${PEERS:-1}" = 1 ]; then  # PEERS=0: the profiles only
COMPILE=${COMPILE-1} STEPS=${STEPS:-12} OUT=$L/train sh "$ROOT/bench/run-gpu-train.sh" "$B" \
  >"$O/train.txt" 2>&1
grep -E "^step (1|2|12)/" "$L/train/mxc-train.log" >>"$O/train.txt"
{
  "$B/bench_lora" --device gpu --dtype bf16 --steps 5
  python3 "$ROOT/bench/peers/torch_lora.py" --device cuda --dtype bf16 --steps 5
} >"$O/lora.txt" 2>&1
fi
prof() { # name, then the command: the op table and the slowest kernels
  n=$1; shift
  MXC_PROFILE=1 MXC_PROFILE_SLOW=${SLOW:-2000} "$@" >"$L/$n.out" 2>"$L/$n.err"
  echo "== $n"
  sed -n '/== mxc op profile/,$p' "$L/$n.err" | head -25
  slow "$L/$n.err"
}
slow() { # the kernels over the threshold, grouped by op and shapes, largest total first
  awk '/^mxc slow/ { t = $4; $1 = $2 = $4 = $5 = ""; s[$0] += t; n[$0]++ }
       END { for (k in s) printf "%10.0f us %5d x %s\n", s[k], n[k], k }' "$1" |
    sort -n -r | head -${TOP:-30}
}
{
  SLOW=200 STEPS=3 PEER=0 WORK=$L/w2 OUT=$L/prof prof train sh "$ROOT/bench/run-gpu-train.sh" "$B"
  sed -n '/== mxc op profile/,$p' "$L/prof/mxc-train.log" | head -25
  slow "$L/prof/mxc-train.log"
  prof lora "$B/bench_lora" --device gpu --dtype bf16 --steps 2
  W=${WORK:-/tmp/mxc-gpu-bench}
  [ -f "$W/l1b-bf16/config.json" ] ||
    python3 "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$L/make.log" 2>&1
  SLOW=500 prof prefill "$B/mxc" bench --device gpu --model "$W/l1b-bf16" -p 2048 -g 1 -n 1
} >"$O/profiles.txt" 2>&1
