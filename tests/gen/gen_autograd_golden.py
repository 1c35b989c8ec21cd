#!/usr/bin/python3
"""Writes PyTorch autograd reference gradients for tests/test_transforms.c.

Run with Debian's python3-torch (CPU):  /usr/bin/python3 tests/gen/gen_autograd_golden.py

Two composite functions, in float64:
  mlp.bin   — 2-layer MLP (tanh) with softmax cross-entropy over integer labels
  attn.bin  — pre-norm attention block: RMSNorm -> q/k/v projections ->
              RoPE (MLX's non-traditional "halves" layout, base 10000) ->
              causal softmax attention (2 heads) -> output projection ->
              residual; loss = sum(y * r) for a fixed random r

File format (little-endian), read by tests/test_transforms.c:
  8 bytes  magic "MXGOLD01"
  u32      number of tensors
  per tensor: u32 name length, name bytes (no NUL), u32 ndim,
              i64 shape[ndim], f64 data[prod(shape)] (row-major)
Inputs are stored under their names, gradients as "grad.<name>", the loss
as "loss" (shape ()).
"""
import os
import struct

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "autograd")


def write(path, tensors):
    with open(path, "wb") as f:
        f.write(b"MXGOLD01")
        f.write(struct.pack("<I", len(tensors)))
        for name, t in tensors:
            t = t.detach().to(torch.float64).contiguous()
            nb = name.encode()
            f.write(struct.pack("<I", len(nb)))
            f.write(nb)
            f.write(struct.pack("<I", t.dim()))
            for s in t.shape:
                f.write(struct.pack("<q", s))
            f.write(t.numpy().astype("<f8").tobytes())


def mlp():
    g = torch.Generator().manual_seed(1)
    B, D, H, C = 8, 16, 32, 10
    x = torch.randn(B, D, generator=g, dtype=torch.float64)
    labels = torch.randint(0, C, (B,), generator=g)
    w1 = (torch.randn(D, H, generator=g, dtype=torch.float64) / D**0.5).requires_grad_()
    b1 = (0.1 * torch.randn(H, generator=g, dtype=torch.float64)).requires_grad_()
    w2 = (torch.randn(H, C, generator=g, dtype=torch.float64) / H**0.5).requires_grad_()
    b2 = (0.1 * torch.randn(C, generator=g, dtype=torch.float64)).requires_grad_()
    x.requires_grad_()
    h = torch.tanh(x @ w1 + b1)
    logits = h @ w2 + b2
    loss = torch.nn.functional.cross_entropy(logits, labels)  # mean over the batch
    loss.backward()
    params = [("x", x), ("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]
    out = [(n, t) for n, t in params] + [("labels", labels.to(torch.float64)), ("loss", loss)]
    out += [("grad." + n, t.grad) for n, t in params]
    write(os.path.join(OUT, "mlp.bin"), out)


def rope(x, base=10000.0):
    # x (B, H, T, hd); MLX non-traditional: rotate the two halves
    T, hd = x.shape[-2], x.shape[-1]
    half = hd // 2
    inv = base ** (-torch.arange(0, half, dtype=torch.float64) * 2.0 / hd)
    theta = torch.arange(T, dtype=torch.float64)[:, None] * inv[None, :]
    c, s = torch.cos(theta), torch.sin(theta)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)


def attn():
    g = torch.Generator().manual_seed(2)
    B, T, D, H = 2, 8, 16, 2
    hd = D // H
    eps = 1e-5
    x = torch.randn(B, T, D, generator=g, dtype=torch.float64).requires_grad_()
    gain = (1.0 + 0.1 * torch.randn(D, generator=g, dtype=torch.float64)).requires_grad_()
    ws = {}
    for n in ("wq", "wk", "wv", "wo"):
        ws[n] = (torch.randn(D, D, generator=g, dtype=torch.float64) / D**0.5).requires_grad_()
    r = torch.randn(B, T, D, generator=g, dtype=torch.float64)
    h = x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * gain

    def heads(t):
        return t.reshape(B, T, H, hd).transpose(1, 2)

    q, k, v = heads(h @ ws["wq"]), heads(h @ ws["wk"]), heads(h @ ws["wv"])
    q, k = rope(q), rope(k)
    scores = (q @ k.transpose(-1, -2)) * hd**-0.5
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1)
    o = (p @ v).transpose(1, 2).reshape(B, T, D)
    y = x + o @ ws["wo"]
    loss = (y * r).sum()
    loss.backward()
    params = [("x", x), ("gain", gain)] + [(n, ws[n]) for n in ("wq", "wk", "wv", "wo")]
    out = params + [("r", r), ("loss", loss)]
    out += [("grad." + n, t.grad) for n, t in params]
    write(os.path.join(OUT, "attn.bin"), out)


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    mlp()
    attn()
    print("wrote", os.path.join(OUT, "mlp.bin"), os.path.join(OUT, "attn.bin"))
