#!/usr/bin/env python3
"""Generate the Hugging Face transformers parity fixtures (tests/fixtures/hf/<arch>/).

For each architecture, a randomly initialised model is built from a realistic
config shrunk to a tiny size (head_dim / GQA ratios, rope settings and tied or
untied heads kept), saved with save_pretrained (safetensors, float32), and run
in float32 on the CPU on fixed token ids; the logits [T, vocab] are saved as
logits.npy next to it, with the ids in ids.json.

Usage (needs torch + transformers + safetensors + numpy; the committed
fixtures came from transformers 5.17.0 / torch 2.11 on the device machine, and
a second run there reproduced them byte for byte):
    python3 tests/gen/gen_hf_parity.py OUTDIR      # writes OUTDIR/<arch>/...
    python3 tests/gen/gen_hf_parity.py OUTDIR --tar FILE.tar.gz [--show]
    tar xzf FILE.tar.gz -C tests/fixtures/hf
--show prints transformers' longrope code and the sliding/longrope configs.
tests/test_hf_parity.c checks mxc against the fixtures.
"""
import inspect
import json
import os
import sys
import tarfile

import numpy as np
import torch
import transformers

torch.use_deterministic_algorithms(True)
torch.set_default_dtype(torch.float32)
torch.set_num_threads(1)

VOCAB = 256
IDS = [1, 17, 200, 3, 99, 42, 255, 7, 128, 64, 5, 31]

COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def supports(cls, word):
    try:
        return word in inspect.getsource(sys.modules[cls.__module__])
    except Exception:
        return False


def specs():
    out = []
    # Llama 3.2 1B: 32 heads / 8 kv heads, head_dim 64, rope_theta 5e5, llama3 rope scaling, tied.
    out.append(("llama", "LlamaConfig", "LlamaForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5,
        rope_theta=500000.0, hidden_act="silu", tie_word_embeddings=True,
        max_position_embeddings=131072,
        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=8192),
        attention_bias=False, mlp_bias=False)))
    # Mistral 7B v0.3: 32 heads / 8 kv, head_dim 128, untied, no sliding window.
    out.append(("mistral", "MistralConfig", "MistralForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5,
        rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=False,
        sliding_window=None)))
    # Qwen2.5 0.5B: 14 heads / 2 kv, head_dim 64, qkv bias, rope_theta 1e6, tied.
    out.append(("qwen2", "Qwen2Config", "Qwen2ForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
        rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
        use_sliding_window=False)))
    # Qwen3 0.6B: 16 heads / 8 kv, head_dim 128 (heads*head_dim = 2*hidden), q/k norms, tied.
    out.append(("qwen3", "Qwen3Config", "Qwen3ForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=2, head_dim=32, rms_norm_eps=1e-6,
        rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True,
        attention_bias=False, use_sliding_window=False)))
    # Gemma 2B: 8 heads / 1 kv, head_dim 256, gelu_pytorch_tanh, tied, embeddings * sqrt(hidden).
    out.append(("gemma", "GemmaConfig", "GemmaForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-6,
        rope_theta=10000.0, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, attention_bias=False)))
    # Gemma 2 2B: 8 heads / 4 kv, head_dim 256, query_pre_attn_scalar, soft-capping,
    # alternating sliding-window layers (window shrunk to 5 < T so it matters).
    out.append(("gemma2", "Gemma2Config", "Gemma2ForCausalLM", dict(
        COMMON, num_hidden_layers=4, intermediate_size=64, num_attention_heads=4,
        num_key_value_heads=2, head_dim=24, rms_norm_eps=1e-6,
        rope_theta=10000.0, hidden_act="gelu_pytorch_tanh", hidden_activation="gelu_pytorch_tanh",
        tie_word_embeddings=True, attention_bias=False, query_pre_attn_scalar=32,
        sliding_window=5, final_logit_softcapping=30.0, attn_logit_softcapping=50.0)))
    # Phi-3 / Phi-4-mini style: fused qkv_proj and gate_up_proj, untied; partial rotary
    # (Phi-4-mini: 0.75) when this transformers supports it.
    phi = dict(COMMON, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
               rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
               sliding_window=None, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0)
    if supports(transformers.Phi3Config, "partial_rotary_factor"):
        phi["partial_rotary_factor"] = 0.75
    out.append(("phi3", "Phi3Config", "Phi3ForCausalLM", phi))
    # Mistral 7B v0.1 keeps a sliding window (4096); shrunk to 5 < T so it matters.
    out.append(("mistral_swa", "MistralConfig", "MistralForCausalLM", dict(
        COMMON, num_attention_heads=4, num_key_value_heads=1, head_dim=16, rms_norm_eps=1e-5,
        rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False, sliding_window=5)))
    # Phi-3.5-mini / Phi-3-128k: longrope (short/long factors per rotary pair and the
    # attention factor of max_position_embeddings / original_max_position_embeddings).
    short = [1.0, 1.02, 1.05, 1.1, 1.2, 1.5, 2.0, 2.5]
    long_ = [1.0, 2.0, 4.0, 8.0, 16.0, 24.0, 32.0, 48.0]
    lr = dict(COMMON, num_attention_heads=4, num_key_value_heads=4, rms_norm_eps=1e-5,
              rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
              sliding_window=None, max_position_embeddings=131072,
              original_max_position_embeddings=4096,
              rope_scaling=dict(type="longrope", short_factor=short, long_factor=long_))
    out.append(("phi3_longrope", "Phi3Config", "Phi3ForCausalLM", lr))
    # ... and with the prompt (12) longer than original_max_position_embeddings (8): long factors.
    lr2 = dict(lr, original_max_position_embeddings=8)
    out.append(("phi3_longrope_long", "Phi3Config", "Phi3ForCausalLM", lr2))
    # qwen2/qwen3 sliding windows (use_sliding_window, max_window_layers) and a
    # mistral whose window (4) is shorter than the cached prefill.
    q2 = dict(COMMON, num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
              rope_theta=1000000.0, hidden_act="silu", tie_word_embeddings=True)
    out.append(("qwen2_swa", "Qwen2Config", "Qwen2ForCausalLM",
                dict(q2, use_sliding_window=True, sliding_window=5, max_window_layers=1)))
    out.append(("qwen2_swa_all", "Qwen2Config", "Qwen2ForCausalLM",
                dict(q2, use_sliding_window=True, sliding_window=5, max_window_layers=0)))
    out.append(("qwen2_swa_off", "Qwen2Config", "Qwen2ForCausalLM",
                dict(q2, use_sliding_window=False, sliding_window=5, max_window_layers=0)))
    out.append(("qwen3_swa", "Qwen3Config", "Qwen3ForCausalLM",
                dict(q2, head_dim=32, attention_bias=False, use_sliding_window=True,
                     sliding_window=5, max_window_layers=1)))
    out.append(("mistral_swa4", "MistralConfig", "MistralForCausalLM", dict(
        COMMON, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
        sliding_window=4)))
    return out


def randomize(model, arch):
    """Weights of a realistic scale (HF's 0.02 init gives near-constant logits)."""
    g = torch.Generator().manual_seed(1234)
    zero_centered = arch in ("gemma", "gemma2")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                if "norm" in name:
                    base = 0.0 if zero_centered else 1.0
                    p.copy_(base + 0.2 * torch.randn(p.shape, generator=g))
                else:  # biases
                    p.copy_(0.2 * torch.randn(p.shape, generator=g))
            else:
                std = 1.0 if "embed" in name else 1.0 / np.sqrt(p.shape[1])
                if zero_centered and "embed" in name:
                    std = 1.0 / np.sqrt(p.shape[1])
                p.copy_(std * torch.randn(p.shape, generator=g))


def main():
    outdir = sys.argv[1]
    tar = sys.argv[sys.argv.index("--tar") + 1] if "--tar" in sys.argv else None
    print("torch", torch.__version__, "transformers", transformers.__version__)
    made = []
    for arch, cfg_name, model_name, kw in specs():
        try:
            cfg_cls = getattr(transformers, cfg_name)
            model_cls = getattr(transformers, model_name)
        except AttributeError as e:
            print(f"{arch}: SKIP ({e})")
            continue
        try:
            torch.manual_seed(0)
            cfg = cfg_cls(**kw)
            cfg._attn_implementation = "eager"
            model = model_cls(cfg).float().eval()
            randomize(model, arch)
            if cfg.tie_word_embeddings:
                model.tie_weights()
            d = os.path.join(outdir, arch)
            os.makedirs(d, exist_ok=True)
            model.save_pretrained(d, safe_serialization=True)
            for extra in ("generation_config.json",):
                if os.path.exists(os.path.join(d, extra)):
                    os.remove(os.path.join(d, extra))
            ids = torch.tensor([IDS], dtype=torch.long)
            with torch.no_grad():
                logits = model(input_ids=ids, use_cache=False).logits[0].float().numpy()
            np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
            with open(os.path.join(d, "ids.json"), "w") as f:
                json.dump(IDS, f)
            with open(os.path.join(d, "versions.txt"), "w") as f:
                f.write(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n")
            size = sum(os.path.getsize(os.path.join(d, x)) for x in os.listdir(d))
            print(f"{arch}: ok  {size} bytes  logits {logits.shape} absmax {np.abs(logits).max():.3f}"
                  f" std {logits.std():.3f}  keys={sorted(kw.keys() - COMMON.keys())}")
            made.append(arch)
        except Exception as e:  # keep going: one architecture failing must not lose the others
            import traceback
            traceback.print_exc()
            print(f"{arch}: FAILED ({e})")
    if "--show" in sys.argv:
        from transformers import modeling_rope_utils as mru
        src = inspect.getsource(mru)
        i = src.find("def _compute_longrope_parameters")
        print(src[i:i + 3500])
        i = src.find("def longrope_frequency_update")
        print(src[i:i + 1800] if i >= 0 else "no longrope_frequency_update")
        for arch in made:
            if "longrope" in arch or "swa" in arch:
                print(arch, open(os.path.join(outdir, arch, "config.json")).read())
    if tar:
        with tarfile.open(tar, "w:gz") as t:
            for arch in made:
                t.add(os.path.join(outdir, arch), arcname=arch)
        print("wrote", tar, os.path.getsize(tar), "bytes")


if __name__ == "__main__":
    main()
