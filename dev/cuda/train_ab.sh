#!/bin/sh
# train_ab.sh — A/B of environment settings on GPU training throughput:
# bench/run-gpu-train.sh's model (mxc only), once per setting and round,
# settings alternating, tokens/s from metrics.jsonl (after the first step).
#
#   CFGS="MXC_SDPA_KEEP_LSE=0;MXC_SDPA_KEEP_LSE=1" ROUNDS=2 STEPS=8 \
#     sh dev/cuda/train_ab.sh <build-dir>
#
# Settings are separated by ';', each a list of VAR=VALUE words ("-" for
# none). The tokenizer is trained once (in $WORK/tok) and reused.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
B=$1
W=${WORK:-/tmp/mxc-train-ab}
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-8}
mkdir -p "$W"
TOK=${TOK:-} # a trained tokenizer to reuse (else one is trained in $W/tok)
r=0
while [ $r -lt "$ROUNDS" ]; do
  IFS=';'
  for cfg in $CFGS; do
    unset IFS
    [ "$cfg" = "-" ] && cfg=""
    # shellcheck disable=SC2086
    env $cfg STEPS="$STEPS" PEER=0 WORK="$W" OUT="$W/run" sh "$ROOT/bench/run-gpu-train.sh" "$B" $TOK \
      >/dev/null 2>&1
    [ -z "$TOK" ] && [ -d "$W/tok" ] && TOK="$W/tok"
    python3 - "$W/out/metrics.jsonl" "${cfg:--}" <<'PYEOF'
import json, sys
try:
    rows = [json.loads(l) for l in open(sys.argv[1]) if '"step"' in l and '"loss"' in l]
    a, b = rows[1], rows[-1]
    tps = 32 * 1024 * (b["step"] - a["step"]) / (b["elapsed"] - a["elapsed"])
    print(f"{sys.argv[2]:40s} {tps:10,.0f} tok/s  loss {b['loss']:.5f}  peak {b['peak_memory']/1e9:.1f} GB")
except Exception as e:
    print(f"{sys.argv[2]:40s} failed: {e}")
PYEOF
    IFS=';'
  done
  unset IFS
  r=$((r + 1))
done
