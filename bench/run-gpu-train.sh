#!/bin/sh
# run-gpu-train.sh — GPU training throughput of `mxc train --dtype bfloat16`
# (mixed precision: float32 master weights and AdamW state) next to PyTorch
# (bf16 autocast, SDPA, fused AdamW; torch.compile with COMPILE=1), same
# model size, same run:
#
#   bench/run-gpu-train.sh [build-dir] [tokenizer-dir]
#
# Model: dim 768, 12 layers, 12 heads, MLP 2048, seq 1024, batch 32, the
# tokenizer's vocabulary (default: a byte-level BPE of 32768 trained by
# `mxc tokenizer-train`... or the tokenizer dir given; mxc's model pads it
# to a multiple of 8, PAD_VOCAB=N sets --pad-vocab N). PEER=0 runs mxc only
# (with MXC_PROFILE=1 its op profile ends $OUT/mxc-train.log). The corpus is this
# repository's docs repeated. Prints tokens/s and MFU (989 TFLOP/s bf16).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-/tmp/mxc-gpu-build}
TOK=${2:-}
W=${WORK:-/tmp/mxc-gpu-train}
LOG=${OUT:-$W}
STEPS=${STEPS:-12}
mkdir -p "$W" "$LOG"
: > "$W/corpus.txt"
i=0
while [ $i -lt 40 ]; do cat "$ROOT"/README.md "$ROOT"/docs/*.md >> "$W/corpus.txt"; i=$((i + 1)); done
if [ -z "$TOK" ]; then
  "$B/mxc" tokenizer-train --data "$W/corpus.txt" --vocab-size 32768 -o "$W/tok" > "$LOG/tok.log" 2>&1
  TOK="$W/tok"
fi
V=$(python3 -c "import json,sys; t=json.load(open(sys.argv[1]+'/tokenizer.json')); print(len(t['model']['vocab']) + len([a for a in t.get('added_tokens', []) if a['content'] not in t['model']['vocab']]))" "$TOK")
rm -rf "$W/out"
"$B/mxc" train --device gpu --dtype bfloat16 --data "$W/corpus.txt" --out "$W/out" \
  --tokenizer "$TOK" --dim 768 --layers 12 --heads 12 --kv-heads 12 --hidden 2048 \
  --seq 1024 --batch 32 --iters "$STEPS" --warmup 2 --eval-every 100000 --save-every 100000 \
  --val-batches 1 --log-every 1 ${PAD_VOCAB:+--pad-vocab "$PAD_VOCAB"} > "$LOG/mxc-train.log" 2>&1 || tail -5 "$LOG/mxc-train.log"
[ "${PEER:-1}" = 0 ] && exit 0
python3 "$ROOT/bench/peers/torch_train_gpu.py" --vocab "$V" --steps "$STEPS" ${COMPILE:+--compile} \
  > "$LOG/torch-train.json" 2>"$LOG/torch-train.err" || tail -5 "$LOG/torch-train.err"
python3 - "$W/out/metrics.jsonl" "$LOG/torch-train.json" "$V" <<'PYEOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l and '"loss"' in l]
V = int(sys.argv[3])
d, L, T, H = 768, 12, 1024, 2048
n = V * d + L * (4 * d * d + 3 * d * H + 2 * d) + d
ftok = 6 * n + 12 * L * T * d
a, b = rows[1], rows[-1]  # after the first step (warm-up)
tps = 32 * 1024 * (b["step"] - a["step"]) / (b["elapsed"] - a["elapsed"])
t = json.load(open(sys.argv[2]))
print(f"\n== GPU training, Llama {n/1e6:.0f}M (dim 768, 12 layers, vocab {V}), seq 1024, batch 32")
print("| engine | tokens/s | MFU | peak memory |")
print("|---|---:|---:|---:|")
print(f"| mxc train --dtype bfloat16 | {tps:,.0f} | {100*tps*ftok/989e12:.1f}% | {b['peak_memory']/1e9:.1f} GB |")
print(f"| PyTorch {t['torch']} bf16 autocast + SDPA + fused AdamW{' + compile' if t['compile'] else ''} | {t['tokens_per_s']:,.0f} | {100*t['mfu']:.1f}% | {t['peak_mem_gb']:.1f} GB |")
PYEOF
