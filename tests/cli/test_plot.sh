#!/bin/sh
# CLI tests for `mxc plot`: a PNG from metrics JSON lines; clear errors.
# Usage: sh tests/cli/test_plot.sh PATH_TO_mxc
set -u
MXC=${1:?usage: test_plot.sh PATH_TO_mxc}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}
contains() { # name, text, needle
  case "$2" in *"$3"*) echo "  ok   $1" ;; *) echo "  FAIL $1: [$2] lacks [$3]"; fail=1 ;; esac
}

i=1
while [ $i -le 30 ]; do
  echo "{\"step\": $((i * 10)), \"loss\": $((100 - i)).5, \"lr\": 0.001}" >> "$tmp/m.jsonl"
  [ $((i % 5)) -eq 0 ] && echo "{\"step\": $((i * 10)), \"val_loss\": $((105 - i)).25}" >> "$tmp/m.jsonl"
  i=$((i + 1))
done

"$MXC" plot --help >/dev/null 2>&1
check "--help" "$?" "0"
"$MXC" plot "$tmp/m.jsonl" -o "$tmp/loss.png" --title "Test run" 2>"$tmp/err"
check "plot exit status" "$?" "0"
check "PNG signature" "$(head -c 8 "$tmp/loss.png" | od -An -tx1 | tr -d ' \n')" "89504e470d0a1a0a"
check "IHDR first" "$(head -c 16 "$tmp/loss.png" | tail -c 4)" "IHDR"
check "800 wide" "$(head -c 20 "$tmp/loss.png" | tail -c 4 | od -An -tu1 | tr -s ' ')" " 0 0 3 32"
"$MXC" plot "$tmp/m.jsonl" -o "$tmp/small.png" --width 320 --height 200 2>/dev/null
check "custom size" "$(head -c 24 "$tmp/small.png" | tail -c 8 | od -An -tu1 | tr -s ' ')" " 0 0 1 64 0 0 0 200"

"$MXC" plot "$tmp/none.jsonl" -o "$tmp/x.png" 2>"$tmp/err"
check "missing file exit status" "$?" "1"
contains "missing file named" "$(cat "$tmp/err")" "none.jsonl"
printf '{"step": 1, "loss": 2.0}\n{"step": 2, "loss": oops}\n' > "$tmp/bad.jsonl"
"$MXC" plot "$tmp/bad.jsonl" -o "$tmp/x.png" 2>"$tmp/err"
check "malformed exit status" "$?" "1"
contains "malformed names file:line" "$(cat "$tmp/err")" "bad.jsonl:2:"
[ -f "$tmp/x.png" ]
check "nothing written on error" "$?" "1"
"$MXC" plot "$tmp/m.jsonl" 2>/dev/null
check "no -o exit status" "$?" "2"
"$MXC" plot "$tmp/m.jsonl" -o "$tmp/x.png" --width 0 2>/dev/null
check "bad width exit status" "$?" "2"

if [ $fail -ne 0 ]; then echo "FAILED"; exit 1; fi
echo "all passed"
