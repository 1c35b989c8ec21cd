#!/bin/sh
# CLI test: llama.cpp loads the GGUFs that `mxc convert --to-gguf` writes
# (F32, F16, BF16, Q8_0, Q4_0) for stories260K and decodes greedily; the
# float ones give mxc generate's greedy ids. llama.cpp is the CPU build
# bundled by the npm package @fugood/llama.node, run through
# bench/peers/llamacpp_decode.mjs. Never installs anything: skips unless node
# and the package (npm install --prefix DIR @fugood/llama.node, DIR =
# $MXC_BENCH_NODE_DIR, default ~/.cache/mxc-bench) and the model data are there.
# Usage: sh tests/cli/test_gguf_llamacpp.sh PATH_TO_mxc
set -u
MXC=${1:?usage: test_gguf_llamacpp.sh PATH_TO_mxc}
DATA=${MXC_DATA_DIR:-../shared/data}
BIN=$DATA/models/stories260K/stories260K.bin
NODE_DIR=${MXC_BENCH_NODE_DIR:-${HOME:-/nonexistent}/.cache/mxc-bench}
PEER=bench/peers/llamacpp_decode.mjs
if [ ! -f "$BIN" ]; then
  echo "skip: $BIN not found (set MXC_DATA_DIR)"
  exit 0
fi
if ! command -v node >/dev/null 2>&1; then
  echo "skip: node not found (llama.cpp runs through its Node.js binding)"
  exit 0
fi
if [ ! -d "$NODE_DIR/node_modules/@fugood/llama.node" ]; then
  echo "skip: @fugood/llama.node is not installed in $NODE_DIR (npm install --prefix $NODE_DIR @fugood/llama.node)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail=0
check() { # name, got, want
  if [ "$2" = "$3" ]; then echo "  ok   $1"; else echo "  FAIL $1: got [$2] want [$3]"; fail=1; fi
}

"$MXC" convert --from-llama2c "$BIN" --mlx-path "$tmp/s" 2>/dev/null
check "convert --from-llama2c" "$?" "0"
want=$("$MXC" generate --model "$tmp/s" --prompt-ids 1 --max-tokens 40 --temp 0 2>/dev/null)
# llama.cpp needs a vocabulary for a prompt: stories260K's tokenizer is not in
# the .bin, so the exported copy gets a stand-in one (token i = "<i>", all
# special, so "<1>" is the prompt [1] and the output text spells the ids)
mkdir "$tmp/g" && cp "$tmp/s/config.json" "$tmp/s/model.safetensors" "$tmp/g/"
node -e '
const fs = require("fs"), d = process.argv[1];
const n = JSON.parse(fs.readFileSync(d + "/config.json")).vocab_size, v = {}, a = [];
for (let i = 0; i < n; i++) { v[`<${i}>`] = i; a.push({id: i, content: `<${i}>`, special: true}); }
fs.writeFileSync(d + "/tokenizer.json", JSON.stringify({model: {type: "BPE", vocab: v, merges: []}, added_tokens: a}));
' "$tmp/g"
check "stand-in tokenizer.json" "$?" "0"

first() { echo "$1" | tr ' ' '\n' | head -n "$2" | tr '\n' ' '; }
for t in f32 f16 bf16 q8_0 q4_0; do
  "$MXC" convert --hf-path "$tmp/g" --to-gguf "$tmp/m-$t.gguf" --dtype "$t" 2>/dev/null
  check "convert --to-gguf --dtype $t" "$?" "0"
  out=$(node "$PEER" "$tmp/m-$t.gguf" --greedy '<1>' --n 40 --threads 2 2>/dev/null |
        sed -n 's/^GREEDY //p')
  got=$(echo "$out" | sed 's/></ /g; s/[<>]//g')
  n=$(echo "$got" | wc -w)
  check "llama.cpp loads the $t GGUF and decodes 40 tokens" "$n" "40"
  same=0
  for i in $(seq 1 40); do
    [ "$(echo "$got" | cut -d' ' -f"$i")" = "$(echo "$want" | cut -d' ' -f"$i")" ] || break
    same=$i
  done
  echo "       $t: llama.cpp's greedy ids equal mxc generate's for $same of 40 tokens"
  case $t in
    f32|f16|bf16) # float weights: the same ids up to a near-tie late in the run
      check "$t: the first 32 greedy ids equal mxc generate's" "$(first "$got" 32)" \
        "$(first "$want" 32)" ;;
  esac
done
exit $fail
