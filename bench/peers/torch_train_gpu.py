"""PyTorch peer of the GPU training benchmark (bench/run-gpu-train.sh): a
Llama of the given size trained on random tokens with bf16 autocast, SDPA
attention, fused AdamW and (with --compile) torch.compile — the recipe a
PyTorch user would reach for.

    python3 bench/peers/torch_train_gpu.py [--dim 768 --layers 12 --heads 12
        --hidden 2048 --vocab 32768 --seq 1024 --batch 32 --steps 12 --compile
        --profile 0]

Prints tokens/s over the steps after the first 2 (warm-up, compilation),
model parameters, and MFU against the H100's 989 TFLOP/s dense bf16 peak
(6 N per token + attention 12 L T d).
"""
import argparse
import json
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
for k, v in dict(dim=768, layers=12, heads=12, hidden=2048, vocab=32768, seq=1024, batch=32,
                 steps=12).items():
    ap.add_argument("--" + k, type=int, default=v)
ap.add_argument("--compile", action="store_true")
ap.add_argument("--peak", type=float, default=989e12)
ap.add_argument("--profile", type=int, default=0,
                help="after the timed steps, this many more under torch.profiler: the "
                     "kernels' GPU time (top 40) goes to stderr")
a = ap.parse_args()
cfg = LlamaConfig(vocab_size=a.vocab, hidden_size=a.dim, intermediate_size=a.hidden,
                  num_hidden_layers=a.layers, num_attention_heads=a.heads,
                  num_key_value_heads=a.heads, max_position_embeddings=a.seq,
                  tie_word_embeddings=True, attn_implementation="sdpa")
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).cuda()  # float32 master weights
n = sum(p.numel() for p in model.parameters())
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, weight_decay=0.01, fused=True)
fwd = torch.compile(model) if a.compile else model


def step(x, y):
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fwd(input_ids=x, labels=y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss


g = torch.Generator(device="cuda").manual_seed(0)
warm = 2
t0 = None
for i in range(a.steps):
    x = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda", generator=g)
    loss = step(x, x)
    if i == warm - 1:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
torch.cuda.synchronize()
dt = time.perf_counter() - t0
tok = a.batch * a.seq * (a.steps - warm) / dt
flops_tok = 6 * n + 12 * a.layers * a.seq * a.dim
r = dict(params=n, tokens_per_s=tok, mfu=tok * flops_tok / a.peak, loss=float(loss),
         peak_mem_gb=torch.cuda.max_memory_allocated() / 1e9, compile=a.compile,
         torch=torch.__version__)
print(json.dumps(r))
if a.profile:
    import sys
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for i in range(a.profile):
            x = torch.randint(0, a.vocab, (a.batch, a.seq), device="cuda", generator=g)
            step(x, x)
        torch.cuda.synchronize()
    print(f"# {a.profile} steps under torch.profiler (GPU time per kernel, all steps)",
          file=sys.stderr)
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=40, max_name_column_width=90),
          file=sys.stderr)
