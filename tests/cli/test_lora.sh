#!/bin/sh
# CLI tests for `mxc lora`, `mxc fuse` and `mxc generate --adapter-path` on
# the bundled models/default: the training loss falls, the adapters file has
# mlx-lm's names and shapes, generation with the adapters equals generation
# with the fused model, bad data lines are reported as file:line.
# Usage: sh tests/cli/test_lora.sh PATH_TO_mxc
set -u
MXC=${1:?usage: test_lora.sh PATH_TO_mxc}
MODEL=models/default
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}
contains() { # name, text, needle
  case "$2" in *"$3"*) echo "  ok   $1" ;; *) echo "  FAIL $1: [$2] lacks [$3]"; fail=1 ;; esac
}

mkdir -p "$tmp/data"
i=0
while [ $i -lt 8 ]; do
  echo '{"text": "the cat sat on the mat. the cat sat on the mat."}' >> "$tmp/data/train.jsonl"
  echo '{"prompt": "Q: colour? ", "completion": "A: blue blue blue"}' >> "$tmp/data/train.jsonl"
  echo '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]}' >> "$tmp/data/train.jsonl"
  i=$((i + 1))
done
echo '{"text": "the cat sat on the mat."}' > "$tmp/data/valid.jsonl"
echo '{"prompt": "Q: colour? ", "completion": "A: blue"}' >> "$tmp/data/valid.jsonl"

"$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 30 --steps-per-report 5 \
  --learning-rate 1e-3 --num-layers 2 --adapter-path "$tmp/ad" >"$tmp/out" 2>"$tmp/err"
check "lora exit status" "$?" "0"
first=$(grep 'Train loss' "$tmp/err" | head -1 | sed 's/.*Train loss \([0-9.]*\).*/\1/')
last=$(grep 'Train loss' "$tmp/err" | tail -1 | sed 's/.*Train loss \([0-9.]*\).*/\1/')
falls=$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a / 2) ? "yes" : "no" }')
check "train loss falls ($first -> $last)" "$falls" "yes"
contains "val loss reported" "$(cat "$tmp/err")" "Val loss"
[ -f "$tmp/ad/adapters.safetensors" ] && [ -f "$tmp/ad/adapter_config.json" ]
check "adapter files written" "$?" "0"
names=$("$MXC" inspect "$tmp/ad/adapters.safetensors" | grep '^  model\.' | awk '{print $1, $4}' | tr '\n' ' ')
want="model.layers.2.self_attn.q_proj.lora_a [192, model.layers.2.self_attn.q_proj.lora_b [8, model.layers.2.self_attn.v_proj.lora_a [192, model.layers.2.self_attn.v_proj.lora_b [8, model.layers.3.self_attn.q_proj.lora_a [192, model.layers.3.self_attn.q_proj.lora_b [8, model.layers.3.self_attn.v_proj.lora_a [192, model.layers.3.self_attn.v_proj.lora_b [8, "
check "adapter names" "$names" "$want"
shapes=$("$MXC" inspect "$tmp/ad/adapters.safetensors" | grep '^  model\.' | awk '{print $4 $5}' | sort -u | tr '\n' ' ')
check "adapter shapes" "$shapes" "[192,8] [8,192] "
cfg=$(tr -d ' \t\n' < "$tmp/ad/adapter_config.json")
contains "config fine_tune_type" "$cfg" '"fine_tune_type":"lora"'
contains "config num_layers" "$cfg" '"num_layers":2'
contains "config rank" "$cfg" '"rank":8'
contains "config keys" "$cfg" '"keys":["self_attn.q_proj","self_attn.v_proj"]'

"$MXC" fuse --model $MODEL --adapter-path "$tmp/ad" --save-path "$tmp/fused" 2>"$tmp/err"
check "fuse exit status" "$?" "0"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json; do
  [ -f "$tmp/fused/$f" ]
  check "fuse writes $f" "$?" "0"
done
a=$("$MXC" generate --model $MODEL --adapter-path "$tmp/ad" --prompt "the" --max-tokens 24 2>/dev/null)
b=$("$MXC" generate --model "$tmp/fused" --prompt "the" --max-tokens 24 2>/dev/null)
c=$("$MXC" generate --model $MODEL --prompt "the" --max-tokens 24 2>/dev/null)
check "generate --adapter-path == fused model" "$a" "$b"
[ "$a" != "$c" ]
check "adapters change the output" "$?" "0"
contains "adapted model learned the data" "$a" "cat sat on the mat"

# errors
printf '{"text": "ok"}\n{"bad": 1}\n' > "$tmp/data/valid.jsonl"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 1 --adapter-path "$tmp/ad2" 2>&1)
check "bad line exit status" "$?" "1"
contains "bad line names file:line" "$err" "valid.jsonl:2:"
printf '{"text": "ok"}\n\nnot json\n' > "$tmp/data/valid.jsonl"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 1 --adapter-path "$tmp/ad2" 2>&1)
contains "invalid JSON names file:line" "$err" "valid.jsonl:3: invalid JSON"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/nodata" --iters 1 2>&1)
check "missing data exit status" "$?" "1"
contains "missing data names the file" "$err" "train.jsonl"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --batch-size x 2>&1)
check "bad flag exit status" "$?" "2"
err=$("$MXC" generate --model $MODEL --adapter-path "$tmp/none" --prompt "x" 2>&1)
check "missing adapters exit status" "$?" "1"
contains "missing adapters names the file" "$err" "adapter_config.json"
err=$("$MXC" fuse --model $MODEL --adapter-path "$tmp/none" --save-path "$tmp/f2" 2>&1)
check "fuse missing adapters exit status" "$?" "1"
exit $fail
