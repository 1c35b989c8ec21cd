#!/bin/sh
# check_fused_model_hf.sh — `mxc fuse` writes a model directory that Hugging
# Face transformers loads and that generates the same greedy text there as
# in mxc. Trains a LoRA adapter on the bundled model for a few steps (so the
# fused weights really differ from the base), fuses it, generates 100 tokens
# greedily with mxc, then runs check_default_model_hf.py on the fused dir.
#
#   tests/gen/check_fused_model_hf.sh MXC_BINARY [WORKDIR]
#
# Needs torch and transformers (run on the GPU machine; CPU is enough).
set -eu
MXC=$1
W=${2:-/tmp/mxc-fuse-check}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
rm -rf "$W" && mkdir -p "$W/data"
for f in train valid; do
  grep -v '^\s*$' "$ROOT/README.md" | head -60 | python3 -c '
import json, sys
for line in sys.stdin:
    print(json.dumps({"text": line.strip()}))' > "$W/data/$f.jsonl"
done
"$MXC" lora --model "$ROOT/models/default" --train --data "$W/data" --iters 30 --num-layers 4 \
  --batch-size 4 --learning-rate 2e-4 --adapter-path "$W/adapters" > "$W/lora.log" 2>&1
"$MXC" fuse --model "$ROOT/models/default" --adapter-path "$W/adapters" --save-path "$W/fused" \
  > "$W/fuse.log" 2>&1
"$MXC" generate --model "$W/fused" --prompt "A day for" --max-tokens 100 --temp 0 \
  2>/dev/null > "$W/expected.txt"
"$MXC" generate --model "$ROOT/models/default" --prompt "A day for" --max-tokens 100 --temp 0 \
  2>/dev/null > "$W/base.txt"
if cmp -s "$W/expected.txt" "$W/base.txt"; then echo "fused text equals the base model's"; fi
python3 "$ROOT/tests/gen/check_default_model_hf.py" "$W/fused" "A day for" "$W/expected.txt"
