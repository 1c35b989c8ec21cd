#!/bin/sh
# test_inspect.sh — `mxc inspect` on every format, and on malformed files
# (an error message naming the file and exit status 1, never a signal).
#   sh tests/cli/test_inspect.sh PATH_TO_mxc     (run from the repository root)
set -u
MXC=${1:?usage: sh tests/cli/test_inspect.sh PATH_TO_mxc}
FIX=tests/fixtures/io
TMP=$(mktemp -d /tmp/mxc_inspect_XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
pass=0

ok() { pass=$((pass + 1)); }
fail() { echo "FAIL: $*" >&2; fails=$((fails + 1)); }

# expect_ok FILE PATTERN... : exit 0 and every pattern in stdout
expect_ok() {
  f=$1; shift
  out=$("$MXC" inspect "$f" 2>"$TMP/err"); rc=$?
  [ $rc -eq 0 ] || { fail "inspect $f: exit $rc: $(cat "$TMP/err")"; return; }
  for p in "$@"; do
    printf '%s\n' "$out" | grep -q -- "$p" || { fail "inspect $f: no '$p' in output"; return; }
  done
  ok
}

# expect_bad FILE PATTERN : exit 1, message on stderr naming the file and PATTERN
expect_bad() {
  "$MXC" inspect "$1" >"$TMP/out" 2>"$TMP/err"; rc=$?
  [ $rc -eq 1 ] || { fail "inspect $1: exit $rc, expected 1"; return; }
  grep -q -- "$1" "$TMP/err" || { fail "inspect $1: message does not name the file: $(cat "$TMP/err")"; return; }
  grep -q -- "$2" "$TMP/err" || { fail "inspect $1: message lacks '$2': $(cat "$TMP/err")"; return; }
  ok
}

expect_ok $FIX/st_reference.safetensors "format: safetensors" "format (string) = \"pt\"" \
  "w_bf16 *BF16 *bfloat16 *\[2, 3, 4\] *48" "tensors: 8"
expect_ok $FIX/npz_compressed.npz "format: npz" "dir/nested *<f2 *float16 *\[2, 3, 4\] *48" \
  "scalar *<f4 *float32 *\[\] *4"
expect_ok $FIX/npy_fortran_f4.npy "format: npy" "arr_0 *<f4 *float32 *\[2, 3, 4\] *96"
expect_ok $FIX/npy_bf16.npy "arr_0 *|V2 *bfloat16"
expect_ok $FIX/gguf_reference.gguf "format: gguf" "general.architecture (string) = \"llama\"" \
  "test.strings (array of string) = \[\"a\", \"\", \"héllo\"\]" "t_f16 *F16 *float16 *\[2, 3, 4\] *48"
expect_ok fuzz/corpus/gguf/quantized.gguf "q4_0.weight *Q4_0 *quantized *\[2, 32\] *36" \
  "q6_k.weight *Q6_K *float16"

# sharded index
cp $FIX/st_reference.safetensors "$TMP/shard-1.safetensors"
printf '{"metadata":{"total_size":720},"weight_map":{"w_f32":"shard-1.safetensors"}}' \
  >"$TMP/model.safetensors.index.json"
expect_ok "$TMP/model.safetensors.index.json" "format: safetensors index" "total_size (int64) = 720"

# malformed files
printf 'garbage!' >"$TMP/bad.safetensors"
expect_bad "$TMP/bad.safetensors" "past the end"
head -c 100 $FIX/npy_f4.npy >"$TMP/trunc.npy"
expect_bad "$TMP/trunc.npy" "npy"
head -c 500 $FIX/npz_stored.npz >"$TMP/trunc.npz"
expect_bad "$TMP/trunc.npz" "zip"
head -c 300 $FIX/gguf_reference.gguf >"$TMP/trunc.gguf"
expect_bad "$TMP/trunc.gguf" "truncated"
printf 'hello' >"$TMP/unknown.bin"
expect_bad "$TMP/unknown.bin" "unknown file format"
expect_bad "$TMP/does-not-exist.gguf" "cannot open"

# usage errors
"$MXC" inspect >/dev/null 2>&1; [ $? -eq 2 ] && ok || fail "inspect without FILE: expected exit 2"
"$MXC" inspect --help | grep -q "usage: mxc inspect" && ok || fail "inspect --help"

echo "test_inspect: $pass passed, $fails failed"
[ $fails -eq 0 ]
