#!/bin/sh
# CLI tests for `mxc convert --from-llama2c`, `mxc generate` (also --max-kv-size,
# --prompt-cache-file with `mxc cache_prompt`) and `mxc logits`
# on the real stories260K model.
# Usage: sh tests/cli/test_generate.sh PATH_TO_mxc   (needs MXC_DATA_DIR data; skips without)
set -u
MXC=${1:?usage: test_generate.sh PATH_TO_mxc}
DATA=${MXC_DATA_DIR:-../shared/data}
BIN=$DATA/models/stories260K/stories260K.bin
FIX=tests/fixtures/lm/stories260k_greedy.json
if [ ! -f "$BIN" ]; then
  echo "skip: $BIN not found (set MXC_DATA_DIR)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}
contains() { # name, text, needle
  case "$2" in *"$3"*) echo "  ok   $1" ;; *) echo "  FAIL $1: [$2] lacks [$3]"; fail=1 ;; esac
}

# the 40 reference ids, space-separated, from the fixture's "tokens" list
want=$(tr -d ' \n' < "$FIX" | sed 's/.*"tokens":\[\([0-9,]*\)\].*/\1/' | tr ',' ' ')

"$MXC" convert --from-llama2c "$BIN" --mlx-path "$tmp/s" 2>"$tmp/err"
check "convert exit status" "$?" "0"
[ -f "$tmp/s/config.json" ] && [ -f "$tmp/s/model.safetensors" ]
check "convert writes config.json + model.safetensors" "$?" "0"

got=$("$MXC" generate --model "$tmp/s" --prompt-ids 1 --max-tokens 40 --temp 0 2>"$tmp/err")
check "generate: greedy ids equal the float64 reference" "$got" "$want"
err=$(cat "$tmp/err")
contains "generate: prompt tok/s" "$err" "Prompt: 1 tokens, "
contains "generate: generation tok/s" "$err" "Generation: 40 tokens, "
contains "generate: peak memory" "$err" "Peak memory: "

got=$("$MXC" generate --model "$tmp/s" --prompt-ids "1, 461,461" --max-tokens 3 --prefill-step-size 1 2>/dev/null)
check "generate: chunked prompt continues the reference" "$got" "401 401 401"

# --max-kv-size larger than the sequence: the reference; smaller: runs past it
got=$("$MXC" generate --model "$tmp/s" --prompt-ids 1 --max-tokens 40 --max-kv-size 64 2>/dev/null)
check "generate --max-kv-size 64: greedy ids equal the reference" "$got" "$want"
got=$("$MXC" generate --model "$tmp/s" --prompt-ids 1 --max-tokens 40 --max-kv-size 8 2>"$tmp/err")
check "generate --max-kv-size 8 past the window exit status" "$?" "0"
contains "  ... generates all 40 tokens" "$(cat "$tmp/err")" "Generation: 40 tokens"

# --prompt-cache-file: the cached ids, then the given ones
"$MXC" cache_prompt --model "$tmp/s" --prompt-ids "1, 461" --prompt-cache-file "$tmp/p.safetensors" \
  2>/dev/null
check "cache_prompt --prompt-ids exit status" "$?" "0"
got=$("$MXC" generate --model "$tmp/s" --prompt-cache-file "$tmp/p.safetensors" --prompt-ids 461 \
  --max-tokens 3 2>/dev/null)
check "generate --prompt-cache-file continues the reference" "$got" "401 401 401"

# errors: no tokenizer for a text prompt, ids outside the vocabulary, bad flags
"$MXC" generate --model "$tmp/s" --prompt "Once upon" >/dev/null 2>"$tmp/err"
check "generate --prompt without tokenizer fails" "$?" "1"
contains "  ... says the tokenizer is missing" "$(cat "$tmp/err")" "has no tokenizer files"
"$MXC" generate --model "$tmp/s" --prompt-ids 1,9999 >/dev/null 2>"$tmp/err"
check "generate: id outside vocab fails" "$?" "1"
contains "  ... names the vocabulary" "$(cat "$tmp/err")" "outside the vocabulary"
"$MXC" generate --model "$tmp/nope" --prompt-ids 1 >/dev/null 2>"$tmp/err"
check "generate: missing model dir fails" "$?" "1"
"$MXC" generate --model "$tmp/s" --prompt-ids 1 --max-tokens x >/dev/null 2>&1
check "generate: bad --max-tokens is a usage error" "$?" "2"
"$MXC" convert --from-llama2c "$tmp/s/config.json" --mlx-path "$tmp/bad" 2>"$tmp/err"
check "convert: not a llama2.c file fails" "$?" "1"

# logits: float32 [T, vocab] .npy (header check only: no NumPy needed)
printf '[1, 461, 461, 401]' > "$tmp/ids.json"
"$MXC" logits --model "$tmp/s" --ids "$tmp/ids.json" --out "$tmp/l.npy" 2>"$tmp/err"
check "logits exit status" "$?" "0"
hdr=$(head -c 80 "$tmp/l.npy" | tr -d '\000' | tr -cd '[:print:]')
contains "logits: float32" "$hdr" "'descr': '<f4'"
contains "logits: shape [4, 512]" "$hdr" "'shape': (4, 512)"
printf '[1, "x"]' > "$tmp/bad.json"
"$MXC" logits --model "$tmp/s" --ids "$tmp/bad.json" --out "$tmp/l2.npy" 2>/dev/null
check "logits: bad ids file fails" "$?" "1"

[ $fail -eq 0 ] && echo "all passed"
exit $fail
