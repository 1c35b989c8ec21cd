#!/bin/sh
# CLI tests for `mxc train`: a tiny run writes a directory that
# `mxc generate --model DIR` loads; bad flags and files give clear errors;
# `mxc tokenizer-train`, BPE tokens (--vocab-size / --tokenizer) and --memory-limit.
# Usage: sh tests/cli/test_train.sh PATH_TO_mxc
set -u
MXC=${1:?usage: test_train.sh PATH_TO_mxc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}
contains() { # name, text, needle
  case "$2" in *"$3"*) echo "  ok   $1" ;; *) echo "  FAIL $1: [$2] lacks [$3]"; fail=1 ;; esac
}

i=0
while [ $i -lt 60 ]; do
  echo "The quick brown fox jumps over the lazy dog. A stitch in time saves nine." >> "$tmp/c.txt"
  i=$((i + 1))
done

"$MXC" train --data "$tmp/c.txt" --out "$tmp/m" --dim 32 --layers 2 --heads 2 --kv-heads 2 \
  --hidden 64 --seq 32 --batch 4 --iters 20 --warmup 2 --eval-every 10 --save-every 10 \
  --log-every 5 >"$tmp/out" 2>"$tmp/err"
check "train exit status" "$?" "0"
for f in config.json model.safetensors tokenizer.json tokenizer_config.json metrics.jsonl \
         checkpoint/state.json checkpoint/optimizer.safetensors; do
  [ -f "$tmp/m/$f" ]
  check "train writes $f" "$?" "0"
done
contains "plain log lines" "$(cat "$tmp/err")" "step 20/20 loss"
contains "validation loss logged" "$(cat "$tmp/err")" "val_loss"
contains "metrics are JSON lines" "$(head -1 "$tmp/m/metrics.jsonl")" '{"step": 5, "loss": '
contains "config is llama, tied" "$(tr -d ' \n\t' < "$tmp/m/config.json")" '"tie_word_embeddings":true'

out=$("$MXC" generate --model "$tmp/m" --prompt "The quick" --max-tokens 10 --temp 0 2>"$tmp/gerr")
check "generate exit status" "$?" "0"
contains "generate reports tokens" "$(cat "$tmp/gerr")" "Generation: 10 tokens"
out2=$(MXC_DEFAULT_MODEL="$tmp/m" "$MXC" generate --prompt "The quick" --max-tokens 10 --temp 0 2>/dev/null)
check "generate without --model uses MXC_DEFAULT_MODEL" "$out2" "$out"

"$MXC" train --data "$tmp/c.txt" --out "$tmp/m" --dim 32 --layers 2 --heads 2 --kv-heads 2 \
  --hidden 64 --seq 32 --batch 4 --iters 25 --warmup 2 --eval-every 10 --save-every 10 \
  --resume >/dev/null 2>"$tmp/err"
check "resume exit status" "$?" "0"
contains "resume continues to 25" "$(cat "$tmp/err")" "step 25/25"

"$MXC" train --data "$tmp/none.txt" --out "$tmp/x" >/dev/null 2>"$tmp/err"
check "missing data exit status" "$?" "1"
contains "missing data names the file" "$(cat "$tmp/err")" "none.txt"
"$MXC" train --out "$tmp/x" >/dev/null 2>"$tmp/err"
check "no --data exit status" "$?" "2"
contains "no --data message" "$(cat "$tmp/err")" "--data"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/x" --dim abc >/dev/null 2>"$tmp/err"
check "bad number exit status" "$?" "2"
contains "bad number message" "$(cat "$tmp/err")" "--dim expects an integer"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/x" --dim 100 --heads 3 >/dev/null 2>"$tmp/err"
check "bad shape exit status" "$?" "2"
contains "bad shape message" "$(cat "$tmp/err")" "multiple of --heads"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/x" --bogus 1 >/dev/null 2>"$tmp/err"
check "unknown flag exit status" "$?" "2"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/y" --resume --dim 32 --heads 2 --kv-heads 2 >/dev/null 2>"$tmp/err"
check "resume without checkpoint exit status" "$?" "1"
contains "resume without checkpoint message" "$(cat "$tmp/err")" "no checkpoint"

# ---- tokenizer-train, --vocab-size / --tokenizer, --memory-limit ----
"$MXC" tokenizer-train --help >/dev/null 2>&1
check "tokenizer-train --help" "$?" "0"
"$MXC" tokenizer-train --data "$tmp/c.txt" --vocab-size 300 -o "$tmp/tok" >/dev/null 2>"$tmp/err"
check "tokenizer-train exit status" "$?" "0"
contains "tokenizer-train summary" "$(cat "$tmp/err")" "tokens,"
contains "tokenizer.json has merges" "$(tr -d ' \n\t' < "$tmp/tok/tokenizer.json")" '"merges":["'
contains "tokenizer_config names bos" "$(tr -d ' \n\t' < "$tmp/tok/tokenizer_config.json")" '"bos_token":"<|bos|>"'
ids=$(echo '["The quick brown fox"]' | "$MXC" tokenize --tokenizer "$tmp/tok" 2>/dev/null)
check "our loader encodes it" "$?" "0"
case "$ids" in "[[]]"|"") echo "  FAIL tokenize output [$ids]"; fail=1 ;; "[["*) echo "  ok   tokenize output $ids" ;; *) echo "  FAIL tokenize output [$ids]"; fail=1 ;; esac
"$MXC" tokenizer-train --data "$tmp/none.txt" -o "$tmp/tok2" >/dev/null 2>"$tmp/err"
check "tokenizer-train missing data exit status" "$?" "1"
contains "tokenizer-train missing data message" "$(cat "$tmp/err")" "none.txt"
"$MXC" tokenizer-train --data "$tmp/c.txt" --vocab-size 0 -o "$tmp/tok2" >/dev/null 2>"$tmp/err"
check "tokenizer-train bad vocab exit status" "$?" "1"
contains "tokenizer-train bad vocab message" "$(cat "$tmp/err")" "--vocab-size"
"$MXC" tokenizer-train --data "$tmp/c.txt" >/dev/null 2>"$tmp/err"
check "tokenizer-train without -o exit status" "$?" "2"

"$MXC" train --data "$tmp/c.txt" --out "$tmp/bpe" --vocab-size 280 --dim 32 --layers 1 --heads 2 \
  --kv-heads 2 --hidden 64 --seq 16 --batch 4 --iters 5 --warmup 1 --eval-every 5 >/dev/null 2>"$tmp/err"
check "train --vocab-size exit status" "$?" "0"
contains "train --vocab-size writes merges" "$(tr -d ' \n\t' < "$tmp/bpe/tokenizer.json")" '"merges":["'
"$MXC" generate --model "$tmp/bpe" --prompt "The quick" --max-tokens 5 --temp 0 >/dev/null 2>"$tmp/gerr"
check "generate with the BPE model" "$?" "0"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/bpe2" --tokenizer "$tmp/tok" --dim 32 --layers 1 --heads 2 \
  --kv-heads 2 --hidden 64 --seq 16 --batch 4 --iters 3 --warmup 1 >/dev/null 2>"$tmp/err"
check "train --tokenizer exit status" "$?" "0"
cmp -s "$tmp/tok/tokenizer.json" "$tmp/bpe2/tokenizer.json"
check "train --tokenizer copies tokenizer.json" "$?" "0"

"$MXC" train --data "$tmp/c.txt" --out "$tmp/mem" --dim 32 --layers 1 --heads 2 --kv-heads 2 \
  --hidden 64 --seq 16 --batch 4 --iters 3 --warmup 1 --memory-limit 4GB >/dev/null 2>"$tmp/err"
check "train --memory-limit 4GB exit status" "$?" "0"
contains "memory plan reported" "$(cat "$tmp/err")" "memory plan: full batch"
contains "memory plan in metrics" "$(head -1 "$tmp/mem/metrics.jsonl")" '"memory_plan": "full"'
"$MXC" train --data "$tmp/c.txt" --out "$tmp/mem2" --dim 32 --layers 1 --heads 2 --kv-heads 2 \
  --hidden 64 --seq 16 --batch 4 --iters 3 --memory-limit 1000 >/dev/null 2>"$tmp/err"
check "train --memory-limit too small exit status" "$?" "1"
contains "too small names the limit" "$(cat "$tmp/err")" "--memory-limit 1000 bytes"
contains "too small names the need" "$(cat "$tmp/err")" "needs about"
[ -f "$tmp/mem2/metrics.jsonl" ]
check "too small stops before step 1" "$?" "1"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/mem3" --memory-limit lots >/dev/null 2>"$tmp/err"
check "bad --memory-limit exit status" "$?" "2"
contains "bad --memory-limit message" "$(cat "$tmp/err")" "--memory-limit"
"$MXC" train --data "$tmp/c.txt" --out "$tmp/gc" --dim 32 --layers 2 --heads 2 --kv-heads 2 \
  --hidden 64 --seq 16 --batch 4 --iters 3 --warmup 1 --grad-checkpoint >/dev/null 2>"$tmp/err"
check "train --grad-checkpoint exit status" "$?" "0"
contains "checkpointing reported" "$(cat "$tmp/err")" "gradient checkpointing"

if [ $fail -ne 0 ]; then echo "FAILED"; exit 1; fi
echo "all passed"
