#!/usr/bin/python3
"""transformers + peft peer of bench/bench_lora.c: LoRA training steps of a
random-weight Llama-3.2-1B-architecture model (LlamaForCausalLM from a
LlamaConfig: hidden 2048, 16 layers, 32 heads, 8 KV heads, MLP 8192,
vocabulary 128256, tied embeddings, RoPE theta 500000), bf16 (or f32) base
weights, peft LoRA rank 8, alpha 160 (scale 20, mlx-lm's default) on q_proj
and v_proj of every layer (adapter weights in float32, peft's default),
Adam lr 1e-5 (fused), batch 4 x 512 random tokens, the model's own
cross-entropy loss (labels shifted inside), SDPA attention.

    python3 bench/peers/peft_lora.py [--dtype bf16|f32] [--steps 5]
        [--batch 4] [--seq 512] [--layers 16] [--hidden 2048] [--heads 32]
        [--kv-heads 8] [--ffn 8192] [--vocab 128256] [--rank 8]

bitsandbytes is not used: the 4-bit row of bench_lora has no peer here
(bench/peers/torch_lora.py is the hand-written QLoRA peer). Compare with
`bench_lora --bits 0` (a bf16 base). Prints one table row in bench_lora's
format; needs a CUDA device.
"""
import argparse
import statistics
import time

import torch

import peft
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16"])
for k, v in [("steps", 5), ("batch", 4), ("seq", 512), ("layers", 16), ("hidden", 2048),
             ("heads", 32), ("kv-heads", 8), ("ffn", 8192), ("vocab", 128256), ("rank", 8)]:
    ap.add_argument("--" + k, type=int, default=v)
a = ap.parse_args()
dev = torch.device("cuda")
DT = torch.bfloat16 if a.dtype == "bf16" else torch.float32
torch.manual_seed(0)

t0 = time.perf_counter()
cfg = LlamaConfig(hidden_size=a.hidden, intermediate_size=a.ffn, num_hidden_layers=a.layers,
                  num_attention_heads=a.heads, num_key_value_heads=a.kv_heads,
                  vocab_size=a.vocab, max_position_embeddings=max(2048, a.seq),
                  rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
                  attention_bias=False, mlp_bias=False)
cfg._attn_implementation = "sdpa"
with torch.device(dev):
    model = LlamaForCausalLM(cfg).to(DT)
lc = peft.LoraConfig(r=a.rank, lora_alpha=20 * a.rank, lora_dropout=0.0,
                     target_modules=["q_proj", "v_proj"], bias="none", task_type="CAUSAL_LM")
model = peft.get_peft_model(model, lc)
model.train()
ntrain = sum(p.numel() for p in model.parameters() if p.requires_grad)
adapter_dt = next(p.dtype for p in model.parameters() if p.requires_grad)
opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5, fused=True)
torch.cuda.synchronize()
t_build = time.perf_counter() - t0

g = torch.Generator().manual_seed(12345)
ids = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(dev)


def step():
    opt.zero_grad(set_to_none=True)
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    torch.cuda.synchronize()
    return loss.item()


torch.cuda.reset_peak_memory_stats()
loss0 = step()
loss1 = loss0
times = []
for _ in range(a.steps):
    t = time.perf_counter()
    loss1 = step()
    times.append(time.perf_counter() - t)
med, best = statistics.median(times), min(times)
peak = torch.cuda.max_memory_allocated() / 1e9
B, T = a.batch, a.seq
print(f"peft_lora: torch {torch.__version__}, transformers {transformers.__version__}, "
      f"peft {peft.__version__}, {a.dtype} base, adapters {adapter_dt}, {ntrain} trainable, "
      f"build {t_build:.1f} s, loss {loss0:.3f} -> {loss1:.3f}")
print(f"| transformers {transformers.__version__} + peft {peft.__version__} ({a.dtype} base) "
      f"| {med:.3f} | {best:.3f} | {B * T / med:.0f} | {peak:.2f} GB |")
