#!/bin/sh
# CLI tests for `mxc chat` and `mxc bench` on the bundled models/default
# (byte-level tokenizer, no chat template: chat runs in plain mode, the
# prompt being the turns' texts joined by newlines).
# Usage: sh tests/cli/test_chat.sh PATH_TO_mxc   (run from the repository root)
set -u
MXC=${1:?usage: test_chat.sh PATH_TO_mxc}
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

# the first reply equals `generate` on the plain prompt "A day for\n"
"$MXC" generate --model $M --prompt "A day for$NL" --max-tokens 20 >"$tmp/r1" 2>/dev/null
check "generate reference exit status" "$?" "0"
printf 'A day for\n' | "$MXC" chat --model $M --max-tokens 20 >"$tmp/out" 2>"$tmp/err"
check "chat: one turn then EOF exits 0" "$?" "0"
{ printf '>> '; cat "$tmp/r1"; printf '>> \n'; } >"$tmp/want"
same_file "chat: greedy reply equals generate's" "$tmp/out" "$tmp/want"

# two turns then q: the second prompt holds the first exchange (cache reused)
r1=$(cat "$tmp/r1"; echo x); r1=${r1%??}   # the reply without its final newline
"$MXC" generate --model $M --prompt "A day for$NL$r1${NL}Hello$NL" --max-tokens 20 \
  >"$tmp/r2" 2>/dev/null
printf 'A day for\nHello\nq\nnever read\n' | "$MXC" chat --model $M --max-tokens 20 \
  >"$tmp/out" 2>"$tmp/err"
check "chat: two turns then q exits 0" "$?" "0"
{ printf '>> '; cat "$tmp/r1"; printf '>> '; cat "$tmp/r2"; printf '>> '; } >"$tmp/want"
same_file "chat: second reply continues the conversation" "$tmp/out" "$tmp/want"
[ "$(wc -c <"$tmp/r2")" -gt 1 ] && [ "$(wc -c <"$tmp/r1")" -gt 1 ]
check "chat: both replies have text" "$?" "0"

# r resets: the same question gets the first reply again
printf 'A day for\nr\nA day for\nq\n' | "$MXC" chat --model $M --max-tokens 20 \
  >"$tmp/out" 2>"$tmp/err"
check "chat: reset session exits 0" "$?" "0"
{ printf '>> '; cat "$tmp/r1"; printf '>> [conversation reset]\n>> '; cat "$tmp/r1"; printf '>> '; } \
  >"$tmp/want"
same_file "chat: r resets the history" "$tmp/out" "$tmp/want"

# system prompt (plain mode: its own line first); sampling flags accepted
"$MXC" generate --model $M --prompt "Be brief.${NL}A day for$NL" --max-tokens 10 >"$tmp/r3" 2>/dev/null
printf 'A day for\n' | "$MXC" chat --model $M --max-tokens 10 --system-prompt "Be brief." \
  >"$tmp/out" 2>/dev/null
{ printf '>> '; cat "$tmp/r3"; printf '>> \n'; } >"$tmp/want"
same_file "chat: --system-prompt comes first" "$tmp/out" "$tmp/want"
printf 'A day for\nq\n' | "$MXC" chat --model $M --max-tokens 10 --temp 0.8 --top-p 0.9 \
  --top-k 20 --min-p 0.05 --seed 3 >"$tmp/out" 2>"$tmp/err"
check "chat: sampling flags exit 0" "$?" "0"
contains "chat: sampled reply printed" "$(cat "$tmp/out")" ">> "

# --max-kv-size: a rotating cache (as mlx_lm.chat); a reply longer than the
# cache goes on and equals generate's with the same --max-kv-size
"$MXC" generate --model $M --prompt "A day for$NL" --max-tokens 60 --max-kv-size 12 \
  >"$tmp/rk" 2>/dev/null
check "generate --max-kv-size exit status" "$?" "0"
printf 'A day for\n' | "$MXC" chat --model $M --max-kv-size 12 --max-tokens 60 \
  >"$tmp/out" 2>"$tmp/err"
check "chat: --max-kv-size past the window exits 0" "$?" "0"
{ printf '>> '; cat "$tmp/rk"; printf '>> \n'; } >"$tmp/want"
same_file "chat: --max-kv-size reply equals generate's" "$tmp/out" "$tmp/want"
printf 'A day for\nHello\nq\n' | "$MXC" chat --model $M --max-kv-size 8 --max-tokens 30 \
  >"$tmp/out" 2>"$tmp/err"
check "chat: two turns through a small rotating cache exit 0" "$?" "0"
check "chat: ... without errors" "$(cat "$tmp/err")" ""

# chat template mode: the bundled model with a template added
mkdir -p "$tmp/t"
cp $M/config.json $M/model.safetensors $M/tokenizer.json "$tmp/t/"
cat >"$tmp/t/tokenizer_config.json" <<'JSON'
{"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|bos|>", "eos_token": "<|eos|>",
 "chat_template": "{% for m in messages %}<{{ m.role }}>{{ m.content }}\n{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"}
JSON
"$MXC" generate --model "$tmp/t" --prompt "A day for" --max-tokens 12 >"$tmp/t1" 2>/dev/null
check "generate with template exit status" "$?" "0"
t1=$(cat "$tmp/t1"; echo x); t1=${t1%??}
"$MXC" generate --model "$tmp/t" --ignore-chat-template --max-tokens 12 \
  --prompt "<user>A day for$NL<assistant>$t1$NL<user>Hello$NL<assistant>" >"$tmp/t2" 2>/dev/null
printf 'A day for\nHello\n' | "$MXC" chat --model "$tmp/t" --max-tokens 12 >"$tmp/out" 2>"$tmp/err"
check "chat with template exits 0" "$?" "0"
{ printf '>> '; cat "$tmp/t1"; printf '>> '; cat "$tmp/t2"; printf '>> \n'; } >"$tmp/want"
same_file "chat: template renders the history" "$tmp/out" "$tmp/want"

# bench
"$MXC" bench --model $M -p 16 -g 8 -n 1 >"$tmp/out" 2>"$tmp/err"
check "bench exit status" "$?" "0"
out=$(cat "$tmp/out")
contains "bench: prompt tps" "$out" "Trial 1:  prompt_tps="
contains "bench: generation tps" "$out" "generation_tps="
contains "bench: peak memory" "$out" "peak_memory="
contains "bench: averages" "$out" "Averages: prompt_tps="
n=$(grep -c '^Trial' "$tmp/out")
check "bench: one line per trial" "$n" "1"
"$MXC" bench --model $M -p 4 -g 2 -n 2 >"$tmp/out" 2>&1
n=$(grep -c '^Trial' "$tmp/out")
check "bench -n 2: two trials" "$n" "2"

# errors: bad flags are usage errors (2) with a message, missing models fail (1)
"$MXC" chat --model $M --max-tokens x </dev/null >/dev/null 2>"$tmp/err"
check "chat: bad --max-tokens exits 2" "$?" "2"
contains "  ... names the flag" "$(cat "$tmp/err")" "bad value for --max-tokens"
"$MXC" chat --model $M --bogus 1 </dev/null >/dev/null 2>"$tmp/err"
check "chat: unknown option exits 2" "$?" "2"
contains "  ... names the option" "$(cat "$tmp/err")" "unknown option --bogus"
"$MXC" chat --model $M --temp </dev/null >/dev/null 2>"$tmp/err"
check "chat: missing value exits 2" "$?" "2"
"$MXC" chat --model "$tmp/nope" </dev/null >/dev/null 2>"$tmp/err"
check "chat: missing model fails" "$?" "1"
"$MXC" bench --model $M -p 0 >/dev/null 2>"$tmp/err"
check "bench: -p 0 exits 2" "$?" "2"
contains "  ... names the flag" "$(cat "$tmp/err")" "bad value for -p"
"$MXC" bench --model $M -x 3 >/dev/null 2>"$tmp/err"
check "bench: unknown option exits 2" "$?" "2"
"$MXC" bench --model "$tmp/nope" -p 4 -g 2 -n 1 >/dev/null 2>"$tmp/err"
check "bench: missing model fails" "$?" "1"

[ $fail -eq 0 ] && echo "all passed"
exit $fail
