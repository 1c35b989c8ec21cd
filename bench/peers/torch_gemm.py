#!/usr/bin/python3
"""PyTorch peer of bench_cuda_kernels' "train-gemm" table: the products of
a training step's Linear layers (bf16, 32,768 rows) as autograd runs them,
Y = X W^T, dX = dY W, dW^T = X^T dY, each timed with CUDA events (median
of 5 batches of REPS, after a warm-up batch).

    python3 bench/peers/torch_gemm.py [REPS]
"""
import statistics
import sys

import torch

reps = int(sys.argv[1]) if len(sys.argv) > 1 else 20
M = 32768
print("| K -> N | product | time (us) | TFLOP/s |\n|---|---|---|---|")
for K, N in ((768, 768), (768, 2048), (2048, 768), (768, 2304)):
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(M, K, device="cuda", generator=g).bfloat16()
    w = torch.randn(N, K, device="cuda", generator=g).bfloat16()
    dy = torch.randn(M, N, device="cuda", generator=g).bfloat16()
    prods = (("Y = X W^T", lambda: x @ w.t()), ("dX = dY W", lambda: dy @ w),
             ("dW^T = X^T dY", lambda: x.t() @ dy))
    for name, f in prods:
        ts = []
        for b in range(6):
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
            for _ in range(reps):
                f()
            e1.record()
            e1.synchronize()
            if b:
                ts.append(e0.elapsed_time(e1) / reps * 1e-3)
        t = statistics.median(ts)
        print(f"| {K} -> {N} | {name} | {t * 1e6:.1f} | {2.0 * M * N * K / t * 1e-12:.0f} |")
