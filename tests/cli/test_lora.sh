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

# ---- YAML config, checkpoints, flags over the config -----------------------
cp "$tmp/data/train.jsonl" "$tmp/data/test.jsonl"
echo '{"text": "the cat sat on the mat."}' > "$tmp/data/valid.jsonl"
cat > "$tmp/cfg.yaml" <<EOF
model: $MODEL
train: true
data: $tmp/data
adapter_path: $tmp/ady
iters: 6
steps_per_report: 2
save_every: 3
num_layers: 1
learning_rate: 1.0e-3
lora_parameters:
  rank: 4
  scale: 20.0
  dropout: 0.0
  keys: [self_attn.q_proj, mlp.down_proj]
lr_schedule:
  name: cosine_decay
  arguments: [1.0e-3, 6]
  warmup: 1
EOF
"$MXC" lora -c "$tmp/cfg.yaml" >"$tmp/out" 2>"$tmp/err"
check "yaml run exit status" "$?" "0"
for f in adapters.safetensors adapter_config.json 0000003_adapters.safetensors 0000006_adapters.safetensors; do
  [ -f "$tmp/ady/$f" ]
  check "yaml run writes $f" "$?" "0"
done
contains "yaml rank in adapter_config" "$(tr -d ' \t\n' < "$tmp/ady/adapter_config.json")" '"rank":4'
names=$("$MXC" inspect "$tmp/ady/adapters.safetensors" | grep '^  model\.' | awk '{print $1, $4 $5}' | tr '\n' ' ')
check "yaml keys -> adapter names" "$names" "model.layers.3.mlp.down_proj.lora_a [512,4] model.layers.3.mlp.down_proj.lora_b [4,192] model.layers.3.self_attn.q_proj.lora_a [192,4] model.layers.3.self_attn.q_proj.lora_b [4,192] "
"$MXC" lora -c "$tmp/cfg.yaml" --iters 4 --adapter-path "$tmp/ady2" 2>"$tmp/err"
check "flags override yaml" "$([ -f "$tmp/ady2/0000003_adapters.safetensors" ] && [ ! -f "$tmp/ady2/0000006_adapters.safetensors" ] && echo yes)" "yes"
printf 'iters: 4\nbatch_sise: 2\n' > "$tmp/bad.yaml"
err=$("$MXC" lora -c "$tmp/bad.yaml" --model $MODEL --train --data "$tmp/data" 2>&1)
check "bad yaml exit status" "$?" "2"
contains "bad yaml names file:line and key" "$err" "bad.yaml:2: unknown key \"batch_sise\""

# ---- --test ----------------------------------------------------------------------
out=$("$MXC" lora --model $MODEL --test --data "$tmp/data" --adapter-path "$tmp/ady" 2>/dev/null)
check "test exit status" "$?" "0"
contains "test reports loss" "$out" "Test loss "
contains "test reports ppl" "$out" ", Test ppl "
base=$("$MXC" lora --model $MODEL --test --data "$tmp/data" --adapter-path "" 2>/dev/null | sed 's/Test loss \([0-9.]*\),.*/\1/')
tuned=$(echo "$out" | sed 's/Test loss \([0-9.]*\),.*/\1/')
check "adapters lower the test loss ($base -> $tuned)" "$(awk -v a="$base" -v b="$tuned" 'BEGIN { print (b < a) ? "yes" : "no" }')" "yes"

# ---- DoRA ---------------------------------------------------------------------------
"$MXC" lora --model $MODEL --train --data "$tmp/data" --fine-tune-type dora --iters 2 --num-layers 1 \
  --adapter-path "$tmp/add" 2>"$tmp/err"
check "dora exit status" "$?" "0"
names=$("$MXC" inspect "$tmp/add/adapters.safetensors" | grep '^  model\.' | awk '{print $1}' | tr '\n' ' ')
check "dora adds magnitudes" "$names" "model.layers.3.self_attn.q_proj.lora_a model.layers.3.self_attn.q_proj.lora_b model.layers.3.self_attn.q_proj.m model.layers.3.self_attn.v_proj.lora_a model.layers.3.self_attn.v_proj.lora_b model.layers.3.self_attn.v_proj.m "

# ---- exact resume -------------------------------------------------------------------
common="--model $MODEL --train --data $tmp/data --num-layers 2 --learning-rate 1e-3 --steps-per-report 1 --batch-size 2"
"$MXC" lora $common --iters 6 --adapter-path "$tmp/r1" 2>"$tmp/err1"
"$MXC" lora $common --iters 3 --adapter-path "$tmp/r2" 2>/dev/null
"$MXC" lora $common --iters 6 --adapter-path "$tmp/r2" --resume-adapter-file "$tmp/r2/adapters.safetensors" 2>"$tmp/err2"
check "resume exit status" "$?" "0"
contains "resume continues at step 3" "$(cat "$tmp/err2")" "at step 3"
a=$(grep 'Train loss' "$tmp/err1" | tail -3 | sed 's/, Learning.*//')
b=$(grep 'Train loss' "$tmp/err2" | sed 's/, Learning.*//')
check "resumed losses == uninterrupted" "$b" "$a"
cmp -s "$tmp/r1/adapters.safetensors" "$tmp/r2/adapters.safetensors"
check "resumed adapters == uninterrupted (bytes)" "$?" "0"

# ---- QLoRA and fuse --dequantize ------------------------------------------------------
"$MXC" convert --hf-path $MODEL --mlx-path "$tmp/q4" -q --q-bits 4 --q-group-size 64 >/dev/null 2>&1
check "quantize a copy" "$?" "0"
"$MXC" lora --model "$tmp/q4" --train --data "$tmp/data" --iters 20 --steps-per-report 10 \
  --learning-rate 2e-3 --num-layers 2 --adapter-path "$tmp/qad" 2>"$tmp/err"
check "qlora exit status" "$?" "0"
first=$(grep 'Val loss' "$tmp/err" | head -1 | sed 's/.*Val loss \([0-9.]*\).*/\1/')
last=$(grep 'Val loss' "$tmp/err" | tail -1 | sed 's/.*Val loss \([0-9.]*\).*/\1/')
check "qlora val loss falls ($first -> $last)" "$(awk -v a="$first" -v b="$last" 'BEGIN { print (b < a) ? "yes" : "no" }')" "yes"
"$MXC" fuse --model "$tmp/q4" --adapter-path "$tmp/qad" --save-path "$tmp/qf" 2>/dev/null
contains "fuse keeps the quantization" "$(cat "$tmp/qf/config.json")" '"quantization"'
"$MXC" fuse --model "$tmp/q4" --adapter-path "$tmp/qad" --save-path "$tmp/qfd" --dequantize 2>/dev/null
check "fuse --dequantize exit status" "$?" "0"
grep -q '"quantization"' "$tmp/qfd/config.json"
check "fuse --dequantize drops the quantization" "$?" "1"
"$MXC" inspect "$tmp/qfd/model.safetensors" | grep -q 'scales'
check "dequantized weights have no scales" "$?" "1"
"$MXC" generate --model "$tmp/qfd" --prompt "the" --max-tokens 8 >/dev/null 2>&1
check "dequantized fused model generates" "$?" "0"

# ---- memory limit, unsupported flags ------------------------------------------------
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 2 --num-layers 2 --memory-limit 1000 --adapter-path "$tmp/m1" 2>&1)
check "memory limit too small exit status" "$?" "1"
contains "memory limit names given bytes" "$err" "--memory-limit 1000 bytes is too small"
contains "memory limit names needed bytes" "$err" "needs"
[ ! -f "$tmp/m1/adapters.safetensors" ]
check "nothing trained under a too-small limit" "$?" "0"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 2 --num-layers 2 --memory-limit 1GB --adapter-path "$tmp/m2" 2>&1)
check "memory limit 1GB exit status" "$?" "0"
contains "memory plan reported" "$err" "Memory plan: micro-batch 4"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 2 --num-layers 2 --grad-checkpoint --adapter-path "$tmp/gc" 2>&1)
check "grad-checkpoint trains" "$?" "0"
[ -f "$tmp/gc/adapters.safetensors" ]
check "grad-checkpoint writes adapters" "$?" "0"
"$MXC" lora --model $MODEL --data "$tmp/data" >/dev/null 2>&1
check "neither train nor test exit status" "$?" "2"
err=$("$MXC" lora --model $MODEL --train --data "$tmp/data" --iters 1 --adapter-path "$tmp/n16" 2>&1)
contains "more layers than the model (mlx-lm's check)" "$err" "--num-layers 16 but the model only has 4 layers"
exit $fail
