#!/bin/sh
# CLI tests for `mxc train`: a tiny run writes a directory that
# `mxc generate --model DIR` loads; bad flags and files give clear errors.
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

if [ $fail -ne 0 ]; then echo "FAILED"; exit 1; fi
echo "all passed"
