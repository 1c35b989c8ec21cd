#!/usr/bin/python3
"""PyTorch peer of bench/bench_transforms.c: forward + backward of a 2-layer
pre-norm transformer block (RMSNorm, attention with RoPE and a causal mask,
SwiGLU MLP, residuals), loss = mean(y^2), float32 on the CPU.

    /usr/bin/python3 bench/peers/torch_transformer_grad.py [B T D H F iters]

Uses Debian's python3-torch (1.13: no F.scaled_dot_product_attention, so
attention is written out as mxc's composed fallback is). Threads: the
MXC_NUM_THREADS environment variable (as mxc), else all cores.
"""
import math
import os
import statistics
import sys
import time

import torch

args = [int(a) for a in sys.argv[1:]]
B, T, D, H, F = args[:5] if len(args) >= 5 else (4, 128, 256, 4, 688)
ITERS = args[5] if len(args) >= 6 else 10
HD = D // H
NLAYER = 2


def rms_norm(x, w, eps=1e-5):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w


def rope(x, base=10000.0):
    half = HD // 2
    inv = base ** (-torch.arange(0, half, dtype=torch.float32) * 2.0 / HD)
    theta = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    c, s = torch.cos(theta), torch.sin(theta)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


MASK = torch.ones(T, T, dtype=torch.bool).tril()


def block(x, p):
    h = rms_norm(x, p["attn_norm"])

    def heads(t):
        return t.reshape(B, T, H, HD).transpose(1, 2)

    q, k, v = heads(h @ p["wq"]), heads(h @ p["wk"]), heads(h @ p["wv"])
    q, k = rope(q), rope(k)
    s = (q @ k.transpose(-1, -2)) * (1.0 / math.sqrt(HD))
    s = s.masked_fill(~MASK, float("-inf"))
    o = (torch.softmax(s, dim=-1) @ v).transpose(1, 2).reshape(B, T, D) @ p["wo"]
    x1 = x + o
    h2 = rms_norm(x1, p["mlp_norm"])
    a = h2 @ p["w1"]
    return x1 + ((a * torch.sigmoid(a)) * (h2 @ p["w3"])) @ p["w2"]


def main():
    torch.set_num_threads(int(os.environ.get("MXC_NUM_THREADS", os.cpu_count())))
    g = torch.Generator().manual_seed(7)
    layers = []
    for _ in range(NLAYER):
        p = {}
        for n, r, c in (("wq", D, D), ("wk", D, D), ("wv", D, D), ("wo", D, D),
                        ("w1", D, F), ("w3", D, F), ("w2", F, D)):
            p[n] = (torch.randn(r, c, generator=g) / math.sqrt(r)).requires_grad_()
        p["attn_norm"] = torch.ones(D).requires_grad_()
        p["mlp_norm"] = torch.ones(D).requires_grad_()
        layers.append(p)
    x = torch.randn(B, T, D, generator=g)
    nparam = sum(t.numel() for p in layers for t in p.values())

    def loss_fn():
        y = x
        for p in layers:
            y = block(y, p)
        return (y * y).mean()

    def fwd():
        with torch.no_grad():
            return loss_fn()

    def vg():
        for p in layers:
            for t in p.values():
                t.grad = None
        loss = loss_fn()
        loss.backward()
        return loss

    print(f"2-layer transformer block, float32, B={B} T={T} D={D} heads={H} ffn={F} "
          f"({nparam} params), torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{ITERS} iterations\n")
    print(f"| {'torch':<38} | {'median ms':>9} | {'min ms':>9} | {'loss':>10} |")
    print(f"|{'-' * 40}|{'-' * 11}|{'-' * 11}|{'-' * 12}|")
    for name, fn in (("forward only (no_grad)", fwd), ("loss.backward()", vg)):
        ms = []
        for it in range(ITERS + 2):
            t0 = time.perf_counter()
            loss = fn()
            t1 = time.perf_counter()
            if it >= 2:
                ms.append((t1 - t0) * 1e3)
        print(f"| {name:<38} | {statistics.median(ms):9.2f} | {min(ms):9.2f} | {loss.item():10.6f} |")


if __name__ == "__main__":
    main()
