#!/usr/bin/env python3
"""Golden fixture for mxc's affine quantization (tests/test_quantized.c).

Implements MLX's documented affine quantization (mx.quantize, mode
"affine") in NumPy, in float32 arithmetic as MLX computes it:

  per group of `group_size` consecutive values along the last axis
    scale = max((max - min) / (2**bits - 1), 1e-7)
    scale = scale if |min| > |max| else -scale
    edge  = min if |min| > |max| else max
    q0    = rint(edge / scale)
    if q0 != 0: scale = edge / q0; bias = edge   else: bias = 0
    q     = clip(rint((w - bias) / scale), 0, 2**bits - 1)
  the q of a row are packed as a little-endian bit stream into uint32
  words: value i occupies bits [i*bits, (i+1)*bits) of the row's stream,
  stream bit b is bit b % 32 of word b // 32 (3/5/6-bit values straddle
  words). Scales and biases are stored in w's dtype.

Writes tests/fixtures/quant/quant_golden.npz:
  w (6, 256) float32, w16 (6, 256) float16,
  b{bits}_g{gs}_{wq,scales,biases} for bits in 2,3,4,5,6,8 and gs in
  32,64,128 (from w), f16_b4_g64_{wq,scales,biases} (from w16).
Run: /usr/bin/python3 tests/gen/gen_quant_golden.py
"""
import os

import numpy as np

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "quant")


def quantize(w, group_size, bits):
    f32 = np.float32
    rows = w.reshape(-1, group_size).astype(f32)
    n_bins = f32((1 << bits) - 1)
    wmax = rows.max(axis=1)
    wmin = rows.min(axis=1)
    mask = np.abs(wmin) > np.abs(wmax)
    scale = np.maximum((wmax - wmin) / n_bins, f32(1e-7)).astype(f32)
    scale = np.where(mask, scale, -scale).astype(f32)
    edge = np.where(mask, wmin, wmax).astype(f32)
    with np.errstate(divide="ignore", invalid="ignore"):
        q0 = np.rint(edge / scale).astype(f32)
        nz = q0 != 0
        scale = np.where(nz, edge / np.where(nz, q0, f32(1)), scale).astype(f32)
    bias = np.where(nz, edge, f32(0)).astype(f32)
    q = np.rint((rows - bias[:, None]) / scale[:, None]).astype(f32)
    q = np.clip(q, f32(0), n_bins).astype(np.uint64)
    # bit stream, little-endian, per row of w
    K = w.shape[-1]
    qrows = q.reshape(-1, K)
    bits_arr = ((qrows[:, :, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint64)
    stream = bits_arr.reshape(qrows.shape[0], -1, 32)
    words = (stream << np.arange(32, dtype=np.uint64)).sum(axis=2).astype(np.uint32)
    lead = w.shape[:-1]
    return (words.reshape(*lead, K * bits // 32),
            scale.astype(w.dtype).reshape(*lead, K // group_size),
            bias.astype(w.dtype).reshape(*lead, K // group_size))


def main():
    rng = np.random.default_rng(20240605)
    w = (rng.standard_normal((6, 256)) * 0.05).astype(np.float32)
    w[1, :] = 0.75                      # constant groups: min == max
    w[2, :] = 0.0                       # zero groups
    w[3, :] = np.floor(rng.uniform(-4, 4, 256)).astype(np.float32)  # ties in rint
    w[4, :128] = -np.abs(w[4, :128])    # all-negative groups (edge = min)
    w[5, :] = rng.uniform(-3, 1, 256).astype(np.float32)
    out = {"w": w, "w16": w.astype(np.float16)}
    for bits in (2, 3, 4, 5, 6, 8):
        for gs in (32, 64, 128):
            wq, s, b = quantize(w, gs, bits)
            out[f"b{bits}_g{gs}_wq"] = wq
            out[f"b{bits}_g{gs}_scales"] = s
            out[f"b{bits}_g{gs}_biases"] = b
    wq, s, b = quantize(out["w16"], 64, 4)
    out["f16_b4_g64_wq"], out["f16_b4_g64_scales"], out["f16_b4_g64_biases"] = wq, s, b
    os.makedirs(OUT, exist_ok=True)
    np.savez(os.path.join(OUT, "quant_golden.npz"), **out)


if __name__ == "__main__":
    main()
