#!/bin/sh
# prefill_probe.sh — where the time of a bf16 prefill goes: per-trial rates,
# the op profile (MXC_PROFILE), every kernel of one 2048-token forward with
# its shapes (MXC_PROFILE_SLOW=0, aggregated), the device time of each kernel
# of the last forward under Nsight Compute (NCU=0 skips it;
# dev/cuda/prefill_profile.py), and an Nsight Systems summary when nsys is
# installed (kernel time against wall time: host gaps).
#
#   dev/cuda/prefill_probe.sh <build-dir>     (after scripts/gpu-check.sh)
# Models as bench/run-gpu.sh makes them (WORK, default /tmp/mxc-gpu-bench);
# P (default 2048) prompt tokens. Output: $OUT (else <build-dir>/probe).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$1
W=${WORK:-/tmp/mxc-gpu-bench}
LOG=${OUT:-$B/probe}
P=${P:-2048}
M=${MODEL:-$W/l1b-bf16}
mkdir -p "$W" "$LOG"
[ -f "$W/l1b-bf16/config.json" ] ||
  python3 "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$LOG/make.log" 2>&1
"$B/mxc" bench --device gpu --model "$M" -p "$P" -g 1 -n 4 >"$LOG/trials.log" 2>&1
echo "== prefill $P, trials:"; grep -E "Trial|Averages" "$LOG/trials.log" | sed 's/^/  /'
MXC_PROFILE=1 "$B/mxc" bench --device gpu --model "$M" -p "$P" -g 1 -n 1 >"$LOG/profile.log" 2>&1
echo "== op profile (warmup + 1 trial, serialised):"; sed -n '/mxc op profile/,$p' "$LOG/profile.log" | head -24
MXC_PROFILE=1 MXC_PROFILE_SLOW=0 "$B/mxc" bench --device gpu --model "$M" -p "$P" -g 1 -n 1 \
  2>&1 | grep "^mxc slow" >"$LOG/kernels.txt"
echo "== kernels of one forward (the trial's), aggregated by op and shapes: calls, total us"
n=$(wc -l <"$LOG/kernels.txt")
tail -n $((n / 2)) "$LOG/kernels.txt" | awk '{op=$3; us=$4; $1=$2=$3=$4=$5=""; k=op" "$0; t[k]+=us; c[k]++; T+=us}
  END {for (k in t) printf "%9.1f %4d  %s\n", t[k], c[k], k; printf "%9.1f total\n", T}' | sort -rn | head -40
if command -v ncu >/dev/null 2>&1 && [ "${NCU:-1}" != 0 ]; then
  # device time of every kernel (real clocks, caches as they are)
  timeout 300 ncu --clock-control none --cache-control none --metrics gpu__time_duration.sum \
    --csv "$B/mxc" bench --device gpu --model "$M" -p "$P" -g 1 -n 1 >"$LOG/ncu.csv" 2>/dev/null
  echo "== ncu: kernels of the last forward"
  python3 "$ROOT/dev/cuda/prefill_profile.py" "$LOG/ncu.csv"
fi
if command -v nsys >/dev/null 2>&1; then
  nsys profile -t cuda -o "$LOG/ns" --force-overwrite true --stats=false \
    "$B/mxc" bench --device gpu --model "$M" -p "$P" -g 1 -n 3 >/dev/null 2>&1
  nsys stats -r cuda_gpu_kern_sum,cuda_api_sum -f csv -o "$LOG/ns" "$LOG/ns.nsys-rep" >/dev/null 2>&1
  echo "== nsys: top kernels (all runs)"; head -25 "$LOG"/ns_cuda_gpu_kern_sum.csv 2>/dev/null | cut -c1-200
  echo "== nsys: CUDA API"; head -15 "$LOG"/ns_cuda_api_sum.csv 2>/dev/null | cut -c1-200
  rm -f "$LOG/ns.nsys-rep" "$LOG/ns.sqlite"
else
  echo "(nsys not installed)"
fi
