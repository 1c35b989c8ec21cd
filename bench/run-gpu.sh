#!/bin/sh
# run-gpu.sh — GPU decode / prefill benchmark of mxc next to PyTorch, in one
# run on a machine with an NVIDIA GPU, torch and transformers.
#
#   bench/run-gpu.sh [build-dir]     (default /tmp/mxc-gpu-build, as
#                                     scripts/gpu-check.sh builds it)
#
# 1. writes a random-weight Llama-3.2-1B-architecture model in bf16 with
#    transformers (bench/peers/make_llama_hf.py) and an MLX 4-bit g64 copy
#    with `mxc convert -q`;
# 2. `mxc bench --device gpu`: prompt 128 + 256 generated tokens, and
#    prefill-only runs of 512 and 2048 tokens, for bf16 and 4-bit;
# 3. the PyTorch peers (bench/peers/torch_decode_cuda.py): copy bandwidth,
#    cuBLAS bf16 GEMM, the CUDA-graph decode loop, transformers generate with
#    a static cache (PEER_FLAGS, default "--hf"; add --compile for
#    torch.compile, which takes minutes to warm up);
# 4. prints one table. Logs and JSON go to $OUT (else <build-dir>/bench).
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
B=${1:-/tmp/mxc-gpu-build}
LOG=${OUT:-$B/bench}
W=${WORK:-/tmp/mxc-gpu-bench}
mkdir -p "$LOG" "$W"
MXC="$B/mxc"
PY=${PYTHON:-python3}
[ -x "$MXC" ] || { echo "run-gpu.sh: $MXC not built (run scripts/gpu-check.sh first)"; exit 1; }

if [ ! -f "$W/l1b-bf16/config.json" ]; then
  $PY "$ROOT/bench/peers/make_llama_hf.py" "$W/l1b-bf16" >"$LOG/make.log" 2>&1 || { tail "$LOG/make.log"; exit 1; }
fi
if [ ! -f "$W/l1b-q4/config.json" ]; then
  "$MXC" convert --hf-path "$W/l1b-bf16" --mlx-path "$W/l1b-q4" -q --q-bits 4 --q-group-size 64 \
    >"$LOG/convert.log" 2>&1 || { tail "$LOG/convert.log"; exit 1; }
fi
BYTES_BF16=$(du -sb "$W/l1b-bf16"/*.safetensors | awk '{s+=$1} END {print s}')
BYTES_Q4=$(du -sb "$W/l1b-q4"/*.safetensors | awk '{s+=$1} END {print s}')

bench() { # name dir p g n -> "prompt_tps gen_tps peak"
  "$MXC" bench --device gpu --model "$2" -p "$3" -g "$4" -n "$5" >"$LOG/mxc-$1.log" 2>&1
  grep Averages "$LOG/mxc-$1.log" | sed 's/.*prompt_tps=\([0-9.]*\), generation_tps=\([0-9.]*\), peak_memory=\([0-9.]*\).*/\1 \2 \3/'
}
R_BF=$(bench bf16 "$W/l1b-bf16" 128 256 2)
R_Q4=$(bench q4 "$W/l1b-q4" 128 256 2)
P_BF512=$(bench bf16-p512 "$W/l1b-bf16" 512 1 3 | cut -d' ' -f1)
P_BF2K=$(bench bf16-p2048 "$W/l1b-bf16" 2048 1 3 | cut -d' ' -f1)
P_Q4512=$(bench q4-p512 "$W/l1b-q4" 512 1 3 | cut -d' ' -f1)
P_Q42K=$(bench q4-p2048 "$W/l1b-q4" 2048 1 3 | cut -d' ' -f1)

$PY "$ROOT/bench/peers/torch_decode_cuda.py" "$W/l1b-bf16" --json "$LOG/torch.json" \
  ${PEER_FLAGS:---hf} >"$LOG/torch.log" 2>&1 || tail -20 "$LOG/torch.log"

$PY - "$LOG/torch.json" "$BYTES_BF16" "$BYTES_Q4" "$R_BF" "$R_Q4" "$P_BF512" "$P_BF2K" "$P_Q4512" "$P_Q42K" "$W/l1b-bf16/config.json" <<'PYEOF'
import json, sys
a = sys.argv
t = json.load(open(a[1])) if a[1] else {}
bbf, bq4 = int(a[2]), int(a[3])
def f(s, i):
    try: return float(s.split()[i])
    except Exception: return float("nan")
bw = t.get("bw_GBps", float("nan")) * 1e9
print(f"\n== GPU decode/prefill: {t.get('device','?')}, torch {t.get('torch','?')}")
print(f"copy bandwidth {bw/1e9:.0f} GB/s, cuBLAS bf16 GEMM {t.get('gemm_bf16_TFLOPs', float('nan')):.0f} TFLOP/s")
print(f"weights read per token: bf16 {bbf/1e9:.3f} GB, 4-bit {bq4/1e9:.3f} GB")
print("| engine | weights | prompt 128 tok/s | decode tok/s | % of bound | prefill 512 tok/s | prefill 2048 tok/s |")
print("|---|---|---:|---:|---:|---:|---:|")
def row(name, w, p, g, p512, p2k, nbytes):
    bound = bw / nbytes
    print(f"| {name} | {w} | {p:.0f} | {g:.1f} | {100*g/bound:.0f}% | {p512:.0f} | {p2k:.0f} |")
row("mxc", "bf16", f(a[4],0), f(a[4],1), float(a[6] or 'nan'), float(a[7] or 'nan'), bbf)
row("mxc", "4-bit g64", f(a[5],0), f(a[5],1), float(a[8] or 'nan'), float(a[9] or 'nan'), bq4)
for k, name in (("loop", "PyTorch loop (CUDA graph)"), ("loop_compile", "PyTorch loop (compile + graph)"),
                ("hf", "transformers generate (static cache, auto-compiled)")):
    r = t.get(k)
    if r:
        row(name, "bf16", r["prompt_tps"], r["gen_tps"], r.get("prefill512_tps", float('nan')),
            r.get("prefill2048_tps", float('nan')), bbf)
print(f"bound (bf16) {bw/bbf:.0f} tok/s, bound (4-bit) {bw/bq4:.0f} tok/s; mxc peak memory: bf16 {f(a[4],2):.2f} GB, 4-bit {f(a[5],2):.2f} GB")
# Prefill against cuBLAS: the FLOPs a prompt of T tokens needs per token —
# every projection (2 per weight), causal attention (q k^T and p v over
# (T + 1) / 2 keys on average) and the LM head once (only the last
# position's logits are needed) — times tok/s, over the GEMM rate above.
c = json.load(open(a[10]))
hs, it, nl = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
nh = c["num_attention_heads"]; kv = c.get("num_key_value_heads", nh)
hd = c.get("head_dim") or hs // nh
lin = hs * nh * hd * 2 + 2 * hs * kv * hd + 3 * hs * it
def flops(T):
    return 2 * nl * lin + 4 * nl * nh * hd * (T + 1) / 2 + 2 * hs * c["vocab_size"] / T
g = t.get("gemm_bf16_TFLOPs", float("nan")) * 1e12
for T, v in ((512, a[6]), (2048, a[7])):
    r = float(v or "nan")
    print(f"prefill {T}: {flops(T)/1e9:.3f} GFLOP a token; mxc bf16 {r*flops(T)/1e12:.0f} TFLOP/s = "
          f"{100*r*flops(T)/g:.0f}% of cuBLAS")
PYEOF
