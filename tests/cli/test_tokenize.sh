#!/bin/sh
# CLI tests for `mxc tokenize`, `mxc detokenize` and `mxc template`.
# Usage: sh tests/cli/test_tokenize.sh PATH_TO_mxc   (needs MXC_DATA_DIR data; skips without)
set -u
MXC=${1:?usage: test_tokenize.sh PATH_TO_mxc}
DATA=${MXC_DATA_DIR:-../shared/data}
T=$DATA/tokenizers
if [ ! -f "$T/llama3/tokenizer.json" ] || [ ! -f "$T/qwen3/tokenizer.json" ]; then
  echo "skip: tokenizers not found under $DATA/tokenizers (set MXC_DATA_DIR)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}

got=$(printf '["Hello world", "<|begin_of_text|>x", ""]' | "$MXC" tokenize --tokenizer "$T/llama3")
check "tokenize llama3 (dir)" "$got" "[[9906,1917],[128000,87],[]]"
got=$(printf '["Hello world"]' | "$MXC" tokenize --tokenizer "$T/mistral/tokenizer.json" --special)
check "tokenize mistral --special" "$got" "[[1,22557,1526]]"
got=$(printf '["Hello world"]' | "$MXC" tokenize --tokenizer "$T/mistral/tokenizer.json")
check "tokenize mistral" "$got" "[[22557,1526]]"
if [ -f "$T/llama2/tokenizer.model" ]; then
  got=$(printf '[" Hello world"]' | "$MXC" tokenize --tokenizer "$T/llama2/tokenizer.model" --special)
  check "tokenize llama2 tokenizer.model" "$got" "[[1,29871,15043,3186]]"
fi
got=$(printf '[[9906,1917],[128000,87],[]]' | "$MXC" detokenize --tokenizer "$T/llama3/tokenizer.json")
check "detokenize llama3" "$got" '["Hello world","<|begin_of_text|>x",""]'
got=$(printf '[[128000,9906]]' | "$MXC" detokenize --tokenizer "$T/llama3" --skip-special)
check "detokenize --skip-special" "$got" '["Hello"]'
got=$(printf '["tab\\tquote\\" é 😀\\n"]' | "$MXC" tokenize --tokenizer "$T/qwen3" | "$MXC" detokenize --tokenizer "$T/qwen3")
check "round trip qwen3" "$got" '["tab\tquote\" é 😀\n"]'

# errors: non-zero exit and a message
if printf 'not json' | "$MXC" tokenize --tokenizer "$T/llama3" 2>/dev/null; then
  echo "  FAIL tokenize accepted bad input"; fail=1; else echo "  ok   tokenize rejects bad input"; fi
if printf '[[99999999]]' | "$MXC" detokenize --tokenizer "$T/llama3" 2>/dev/null; then
  echo "  FAIL detokenize accepted an out-of-range id"; fail=1; else echo "  ok   detokenize rejects bad ids"; fi
if "$MXC" tokenize --tokenizer /nonexistent </dev/null 2>/dev/null; then
  echo "  FAIL missing tokenizer"; fail=1; else echo "  ok   missing tokenizer fails"; fi

# template: exact bytes, no newline added
printf '[{"role": "user", "content": "Hello!"}]' > "$tmp/m.json"
"$MXC" template --tokenizer "$T/llama3" --messages "$tmp/m.json" > "$tmp/out.txt"
printf '<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHello!<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n' > "$tmp/want.txt"
if cmp -s "$tmp/out.txt" "$tmp/want.txt"; then echo "  ok   template llama3"; else echo "  FAIL template llama3"; fail=1; fi
printf '{"messages": [{"role": "user", "content": "Hi"}], "enable_thinking": false}' > "$tmp/q.json"
"$MXC" template --tokenizer "$T/qwen3" --messages "$tmp/q.json" --add-generation-prompt > "$tmp/out.txt"
printf '<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n' > "$tmp/want.txt"
if cmp -s "$tmp/out.txt" "$tmp/want.txt"; then echo "  ok   template qwen3 enable_thinking"; else echo "  FAIL template qwen3"; fail=1; fi
printf '[{"role": "user"}]' > "$tmp/bad.json"
if "$MXC" template --tokenizer "$T/qwen3" --messages "$tmp/bad.json" 2>"$tmp/err.txt"; then
  echo "  FAIL template accepted a message without content"; fail=1
elif grep -q "template line" "$tmp/err.txt"; then echo "  ok   template error names the line"
else echo "  FAIL template error: $(cat "$tmp/err.txt")"; fail=1; fi
exit $fail
