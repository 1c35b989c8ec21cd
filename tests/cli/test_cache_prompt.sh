#!/bin/sh
# CLI tests for `mxc cache_prompt` (mlx_lm.cache_prompt) and `mxc generate
# --prompt-cache-file` on the bundled models/default (byte-level tokenizer):
# generating after a cached prefix gives the tokens of the full prompt.
# Usage: sh tests/cli/test_cache_prompt.sh PATH_TO_mxc   (run from the repository root)
set -u
MXC=${1:?usage: test_cache_prompt.sh PATH_TO_mxc}
M=models/default
if [ ! -f "$M/config.json" ]; then
  echo "skip: $M not found (run from the repository root)"
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
same_file() { # name, got, want
  if cmp -s "$2" "$3"; then echo "  ok   $1"; else
    echo "  FAIL $1:"; echo "    got:  [$(cat "$2")]"; echo "    want: [$(cat "$3")]"; fail=1; fi
}
NL='
'

# plain prompt: "A day" cached, " for\n" given == "A day for\n"
"$MXC" generate --model $M --prompt "A day for$NL" --max-tokens 30 >"$tmp/full" 2>/dev/null
check "generate (full prompt) exit status" "$?" "0"
"$MXC" cache_prompt --model $M --prompt "A day" --prompt-cache-file "$tmp/c.safetensors" \
  2>"$tmp/err"
check "cache_prompt exit status" "$?" "0"
contains "cache_prompt: reports what it saved" "$(cat "$tmp/err")" "Cached 5 tokens"
"$MXC" generate --prompt-cache-file "$tmp/c.safetensors" --prompt " for$NL" --max-tokens 30 \
  >"$tmp/cont" 2>"$tmp/err"
check "generate --prompt-cache-file (model from the file's metadata) exit status" "$?" "0"
same_file "generate after the cached prefix == the full prompt (greedy)" "$tmp/cont" "$tmp/full"
contains "  ... the prompt is the new part only" "$(cat "$tmp/err")" "Prompt: 5 tokens"
# the hyphenated name, --model given, the prompt from stdin
printf 'A day' | "$MXC" cache-prompt --model $M --prompt - --prompt-cache-file "$tmp/d.safetensors" \
  2>/dev/null
check "cache-prompt (hyphenated) with --prompt - exit status" "$?" "0"
cmp -s "$tmp/c.safetensors" "$tmp/d.safetensors"
check "  ... writes the same file" "$?" "0"

# a rotating cache: the prompt longer than --max-kv-size
"$MXC" generate --model $M --prompt "A day for$NL" --max-tokens 30 --max-kv-size 8 \
  >"$tmp/rfull" 2>/dev/null
check "generate --max-kv-size 8 exit status" "$?" "0"
"$MXC" cache_prompt --model $M --prompt "A day" --max-kv-size 8 \
  --prompt-cache-file "$tmp/r.safetensors" 2>/dev/null
check "cache_prompt --max-kv-size exit status" "$?" "0"
"$MXC" inspect "$tmp/r.safetensors" >"$tmp/info" 2>&1
contains "  ... a RotatingKVCache file" "$(cat "$tmp/info")" "RotatingKVCache"
"$MXC" generate --model $M --prompt-cache-file "$tmp/r.safetensors" --prompt " for$NL" \
  --max-tokens 30 >"$tmp/rcont" 2>/dev/null
check "generate with the rotating cache file exit status" "$?" "0"
same_file "  ... == generate --max-kv-size 8 on the full prompt" "$tmp/rcont" "$tmp/rfull"

# chat template: the cached prefix is the user's message left open
mkdir -p "$tmp/t"
cp $M/config.json $M/model.safetensors $M/tokenizer.json "$tmp/t/"
cat >"$tmp/t/tokenizer_config.json" <<'JSON'
{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
 "chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}
JSON
"$MXC" generate --model "$tmp/t" --prompt "A day for" --max-tokens 20 >"$tmp/tfull" 2>/dev/null
check "generate with template exit status" "$?" "0"
"$MXC" cache_prompt --model "$tmp/t" --prompt "A day" --prompt-cache-file "$tmp/t.safetensors" \
  2>/dev/null
check "cache_prompt with template exit status" "$?" "0"
"$MXC" generate --model "$tmp/t" --prompt-cache-file "$tmp/t.safetensors" --prompt " for" \
  --max-tokens 20 >"$tmp/tcont" 2>/dev/null
check "generate --prompt-cache-file with template exit status" "$?" "0"
same_file "template: cached prefix + rest == the full chat (greedy)" "$tmp/tcont" "$tmp/tfull"

# errors: exit 1 with a message naming the file and the mismatch
printf 'not safetensors' >"$tmp/junk.safetensors"
"$MXC" generate --model $M --prompt-cache-file "$tmp/junk.safetensors" --prompt x >/dev/null \
  2>"$tmp/err"
check "generate: malformed cache file fails" "$?" "1"
contains "  ... names the file" "$(cat "$tmp/err")" "junk.safetensors"
"$MXC" generate --model $M --prompt-cache-file "$tmp/none.safetensors" --prompt x >/dev/null \
  2>"$tmp/err"
check "generate: missing cache file fails" "$?" "1"
contains "  ... names the file" "$(cat "$tmp/err")" "none.safetensors"
# the same model in float16: the float32 cache does not match it
"$MXC" convert --hf-path $M --mlx-path "$tmp/f16" --dtype f16 >/dev/null 2>&1
check "convert --dtype f16 exit status" "$?" "0"
"$MXC" generate --model "$tmp/f16" --prompt-cache-file "$tmp/c.safetensors" --prompt x \
  >/dev/null 2>"$tmp/err"
check "generate: a cache of another dtype fails" "$?" "1"
contains "  ... names the mismatch" "$(cat "$tmp/err")" "is float32, the model computes in float16"
"$MXC" generate --model $M --prompt-cache-file "$tmp/c.safetensors" --prompt x --max-kv-size 8 \
  >/dev/null 2>"$tmp/err"
check "generate: --max-kv-size with --prompt-cache-file is a usage error" "$?" "2"
"$MXC" cache_prompt --model $M --prompt "A day" >/dev/null 2>"$tmp/err"
check "cache_prompt without --prompt-cache-file exits 2" "$?" "2"
contains "  ... names the flag" "$(cat "$tmp/err")" "--prompt-cache-file"
"$MXC" cache_prompt --model "$tmp/nope" --prompt "A" --prompt-cache-file "$tmp/x.safetensors" \
  >/dev/null 2>&1
check "cache_prompt: missing model fails" "$?" "1"
"$MXC" cache_prompt --help >"$tmp/help"
check "cache_prompt --help exits 0" "$?" "0"
contains "  ... lists --max-kv-size" "$(cat "$tmp/help")" "--max-kv-size"

[ $fail -eq 0 ] && echo "all passed"
exit $fail
