#!/usr/bin/python3
"""PyTorch peer of bench/bench_lora.c: QLoRA training steps of a random-weight
Llama-3.2-1B-architecture model, written by hand (no peft / bitsandbytes):
4-bit g64 affine base weights (MLX's format: w = scale * q + bias per group
of 64, q in 0..15, packed two per byte) dequantized in the forward pass,
LoRA rank 8, scale 20 on q_proj and v_proj of every layer (float32
parameters), Adam lr 1e-5, batch 4 x 512 random tokens, cross entropy.

    python3 bench/peers/torch_lora.py [--device cpu|cuda] [--dtype f32|bf16]
        [--steps 5] [--batch 4] [--seq 512] [--layers 16] [--hidden 2048]
        [--heads 32] [--kv-heads 8] [--ffn 8192] [--vocab 128256] [--rank 8]

Works with Debian's python3-torch 1.13 (attention written out when
F.scaled_dot_product_attention is missing). Prints one table row in
bench_lora's format. Threads: MXC_NUM_THREADS (as mxc), else all cores.
"""
import argparse
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

ap = argparse.ArgumentParser()
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
ap.add_argument("--dtype", default="bf16", choices=["f32", "bf16"])
for k, v in [("steps", 5), ("batch", 4), ("seq", 512), ("layers", 16), ("hidden", 2048),
             ("heads", 32), ("kv-heads", 8), ("ffn", 8192), ("vocab", 128256), ("rank", 8)]:
    ap.add_argument("--" + k, type=int, default=v)
a = ap.parse_args()
if os.environ.get("MXC_NUM_THREADS"):
    torch.set_num_threads(int(os.environ["MXC_NUM_THREADS"]))
dev = torch.device(a.device)
DT = torch.bfloat16 if a.dtype == "bf16" else torch.float32
D, L, H, KV, FF, V, B, T, R = (a.hidden, a.layers, a.heads, a.kv_heads, a.ffn, a.vocab,
                               a.batch, a.seq, a.rank)
HD = D // H
G = 64
torch.manual_seed(0)


class Q4:
    """An MLX-style affine 4-bit matrix (out, in): packed uint8, scales and
    biases per group of 64 inputs."""

    def __init__(self, w):
        o, i = w.shape
        g = w.float().reshape(o, i // G, G)
        lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
        scale = ((hi - lo) / 15).clamp(min=1e-8)
        q = ((g - lo) / scale).round().clamp(0, 15).to(torch.uint8).reshape(o, i)
        self.packed = (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()
        self.scales, self.biases = scale.to(DT), lo.to(DT)
        self.shape = (o, i)

    def dequant(self):
        o, i = self.shape
        q = torch.stack([self.packed & 15, self.packed >> 4], -1).reshape(o, i // G, G)
        return (q.to(DT) * self.scales + self.biases).reshape(o, i)


def rand_q4(o, i):
    return Q4(torch.empty(o, i, device=dev).uniform_(-1 / math.sqrt(i), 1 / math.sqrt(i)))


t0 = time.perf_counter()
emb = rand_q4(V, D)
layers = []
lora = []
for _ in range(L):
    lyr = {k: rand_q4(o, i) for k, (o, i) in
           {"q": (D, D), "k": (KV * HD, D), "v": (KV * HD, D), "o": (D, D),
            "gate": (FF, D), "up": (FF, D), "down": (D, FF)}.items()}
    lyr["n1"] = torch.ones(D, device=dev, dtype=DT)
    lyr["n2"] = torch.ones(D, device=dev, dtype=DT)
    layers.append(lyr)
    ab = {}
    for k, o in (("q", D), ("v", KV * HD)):
        ab[k + "_a"] = torch.empty(D, R, device=dev).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D)).requires_grad_()
        ab[k + "_b"] = torch.zeros(R, o, device=dev).requires_grad_()
    lora.append(ab)
norm = torch.ones(D, device=dev, dtype=DT)
params = [p for ab in lora for p in ab.values()]
opt = torch.optim.Adam(params, lr=1e-5)
t_build = time.perf_counter() - t0

inv = 500000.0 ** (-torch.arange(0, HD // 2, device=dev, dtype=torch.float32) * 2.0 / HD)
ang = torch.arange(T, device=dev, dtype=torch.float32)[:, None] * inv[None, :]
COS, SIN = ang.cos().to(DT), ang.sin().to(DT)
MASK = torch.full((T, T), float("-inf"), device=dev).triu(1).to(DT)
SDPA = getattr(F, "scaled_dot_product_attention", None)


def rms(x, w, eps=1e-5):
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(DT) * w


def rope(x):
    h = HD // 2
    x1, x2 = x[..., :h], x[..., h:]
    return torch.cat([x1 * COS - x2 * SIN, x1 * SIN + x2 * COS], -1)


def lin(x, q):
    return x @ q.dequant().t()


def lora_lin(x, q, a_, b_):
    return lin(x, q) + (20.0 * ((x.float() @ a_) @ b_)).to(DT)


def forward(x):
    h = emb.dequant()[x]
    for lyr, ab in zip(layers, lora):
        y = rms(h, lyr["n1"])
        q = lora_lin(y, lyr["q"], ab["q_a"], ab["q_b"]).view(B, T, H, HD).transpose(1, 2)
        k = lin(y, lyr["k"]).view(B, T, KV, HD).transpose(1, 2)
        v = lora_lin(y, lyr["v"], ab["v_a"], ab["v_b"]).view(B, T, KV, HD).transpose(1, 2)
        q, k = rope(q), rope(k)
        k = k.repeat_interleave(H // KV, 1)
        v = v.repeat_interleave(H // KV, 1)
        if SDPA is not None:
            o = SDPA(q, k, v, is_causal=True)
        else:
            s = (q @ k.transpose(-1, -2)) / math.sqrt(HD) + MASK
            o = s.float().softmax(-1).to(DT) @ v
        h = h + lin(o.transpose(1, 2).reshape(B, T, D), lyr["o"])
        y = rms(h, lyr["n2"])
        h = h + lin(F.silu(lin(y, lyr["gate"])) * lin(y, lyr["up"]), lyr["down"])
    return rms(h, norm) @ emb.dequant().t()  # tied embeddings


g = torch.Generator().manual_seed(12345)
ids = torch.randint(0, V, (B, T + 1), generator=g).to(dev)
x, y = ids[:, :-1], ids[:, 1:]


def step():
    opt.zero_grad(set_to_none=True)
    logits = forward(x)
    loss = F.cross_entropy(logits.float().reshape(-1, V), y.reshape(-1))
    loss.backward()
    opt.step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return loss.item()


if dev.type == "cuda":
    torch.cuda.reset_peak_memory_stats()
times = []
loss0 = step()
loss1 = loss0
for _ in range(a.steps):
    t = time.perf_counter()
    loss1 = step()
    times.append(time.perf_counter() - t)
med, best = statistics.median(times), min(times)
if dev.type == "cuda":
    peak = "%.2f GB" % (torch.cuda.max_memory_allocated() / 1e9)
else:
    try:
        import resource
        peak = "%.2f GB (max RSS)" % (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9)
    except Exception:
        peak = "?"
print(f"torch_lora: torch {torch.__version__}, device {dev}, {a.dtype}, build {t_build:.1f} s, "
      f"loss {loss0:.3f} -> {loss1:.3f}, sdpa {'yes' if SDPA else 'no'}")
print(f"| torch {torch.__version__} (hand-written QLoRA) | {med:.3f} | {best:.3f} | {B * T / med:.0f} | {peak} |")
