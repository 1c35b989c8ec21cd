"""Writes a randomly initialised Llama-3.2-1B-architecture model with
transformers' save_pretrained (bfloat16 unless --dtype says otherwise).

    python3 bench/peers/make_llama_hf.py OUT_DIR [--layers 16] [--dtype bfloat16]
        [--hidden 2048 --intermediate 8192 --heads 32 --kv-heads 8]

(a narrow copy — e.g. --hidden 256 --intermediate 1024 --heads 4 --kv-heads 1 —
runs the same ops on little data: its prefill time is mostly host work.)

The configuration is Llama-3.2-1B's (hidden 2048, 16 layers, 32 heads, 8 KV
heads, head_dim 64, MLP 8192, vocab 128256, tied embeddings, rope theta
500000 with llama3 scaling); the weights are transformers' default random
initialisation (normal, std 0.02) with a fixed seed. Used by the GPU decode
benchmark (bench/run-gpu.sh); needs torch and transformers.
"""
import argparse
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--intermediate", type=int, default=8192)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    a = ap.parse_args()
    cfg = LlamaConfig(
        vocab_size=128256, hidden_size=a.hidden, intermediate_size=a.intermediate,
        num_hidden_layers=a.layers, num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
        head_dim=64, max_position_embeddings=131072, rms_norm_eps=1e-5,
        rope_theta=500000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001, hidden_act="silu")
    torch.manual_seed(0)
    t = time.time()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    with torch.device(dev):
        m = LlamaForCausalLM(cfg).to(getattr(torch, a.dtype))
    m.save_pretrained(a.out, safe_serialization=True)
    n = sum(p.numel() for p in m.parameters())
    print(f"wrote {a.out}: {n / 1e9:.3f} B parameters, {a.dtype}, {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
