#!/usr/bin/python3
"""make_random_llama.py — a random-weight model directory with the
Llama-3.2-1B architecture (hidden 2048, 16 layers, 32 heads, 8 KV heads,
intermediate 8192, vocab 128256, tied embeddings, llama3 rope scaling), for
the decode benchmark (bench/run-decode.sh). Weights ~ N(0, 0.02), norms 1,
written as one bfloat16 model.safetensors with an HF config.json; a
tokenizer.json/tokenizer_config.json given with --tokenizer is copied (the
GGUF export needs it for llama.cpp's vocabulary).

  make_random_llama.py OUT_DIR [--tokenizer DIR] [--seed S] [--layers N]
"""
import argparse
import json
import os
import shutil
import struct

import numpy as np

CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "tie_word_embeddings": True,
    "hidden_act": "silu",
    "attention_bias": False,
    "mlp_bias": False,
    "bos_token_id": 128000,
    "eos_token_id": 128001,
    "torch_dtype": "bfloat16",
}


def to_bf16(a):
    """float32 -> bfloat16 bits (round to nearest even), as uint16."""
    u = a.astype(np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def shapes(c):
    h, i, v = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    hd = c["head_dim"]
    q, kv = c["num_attention_heads"] * hd, c["num_key_value_heads"] * hd
    yield "model.embed_tokens.weight", (v, h)
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        yield p + "input_layernorm.weight", (h,)
        yield p + "self_attn.q_proj.weight", (q, h)
        yield p + "self_attn.k_proj.weight", (kv, h)
        yield p + "self_attn.v_proj.weight", (kv, h)
        yield p + "self_attn.o_proj.weight", (h, q)
        yield p + "post_attention_layernorm.weight", (h,)
        yield p + "mlp.gate_proj.weight", (i, h)
        yield p + "mlp.up_proj.weight", (i, h)
        yield p + "mlp.down_proj.weight", (h, i)
    yield "model.norm.weight", (h,)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tokenizer", help="directory with tokenizer.json to copy")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=16)
    a = ap.parse_args()
    c = dict(CONFIG, num_hidden_layers=a.layers)
    os.makedirs(a.out, exist_ok=True)
    items = sorted(shapes(c))
    header, off = {"__metadata__": {"format": "pt"}}, 0
    for name, shp in items:
        n = int(np.prod(shp)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shp), "data_offsets": [off, off + n]}
        off += n
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    rng = np.random.default_rng(a.seed)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for name, shp in items:
            if len(shp) == 1:
                f.write(to_bf16(np.ones(shp, np.float32)).tobytes())
                continue
            rows = shp[0]
            for r0 in range(0, rows, 8192):  # bounded memory
                blk = rng.standard_normal((min(8192, rows - r0), shp[1]), dtype=np.float32)
                f.write(to_bf16(blk * np.float32(0.02)).tobytes())
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    if a.tokenizer:
        for fn in ("tokenizer.json", "tokenizer_config.json"):
            src = os.path.join(a.tokenizer, fn)
            if os.path.exists(src):
                shutil.copy(src, os.path.join(a.out, fn))
    print(f"wrote {a.out}: {off / 1e9:.2f} GB of bfloat16 weights")


if __name__ == "__main__":
    main()
