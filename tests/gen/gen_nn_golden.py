#!/usr/bin/python3
"""Writes PyTorch references for tests/test_nn_golden.c (mxc/nn.h layers
and losses with MLX semantics).

Run with Debian's python3-torch (CPU):  /usr/bin/python3 tests/gen/gen_nn_golden.py

One .npz per case in tests/fixtures/nn/ (float32 unless noted):
  in.<name>     inputs of the layer / loss (integer targets as int32)
  param.<name>  parameters, under their MLX names (weight, bias, ...)
  cot           a random cotangent of the output (layers only)
  out           the output
  grad.<name>   d sum(out * cot) / d input-or-param (layers), or
                d out / d input (losses with a scalar output; with
                reduction none the cotangent is ones)
Everything is computed in float64 from the float32 values, then stored as
float32. The C test rebuilds each layer from param.* and compares.
"""
import math
import os

import numpy as np
import torch
import torch.nn.functional as F

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "nn")
g = torch.Generator().manual_seed(1234)


def rnd(*shape, scale=1.0):
    # float32-representable values, used in float64
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).float().double()


def save(name, inputs, params, out, grads, cot=None):
    d = {}
    for k, v in inputs.items():
        d["in." + k] = v.detach().numpy().astype(np.int32 if not v.is_floating_point() else np.float32)
    for k, v in params.items():
        d["param." + k] = v.detach().numpy().astype(np.float32)
    d["out"] = out.detach().numpy().astype(np.float32)
    if cot is not None:
        d["cot"] = cot.numpy().astype(np.float32)
    for k, v in grads.items():
        d["grad." + k] = v.detach().numpy().astype(np.float32)
    np.savez(os.path.join(OUT, name + ".npz"), **d)


def layer_case(name, fn, inputs, params, diff_inputs=True):
    leaves = {}
    for k, v in list(inputs.items()) + list(params.items()):
        if v.is_floating_point() and (diff_inputs or k in params):
            v.requires_grad_()
            leaves[k] = v
    out = fn(**{**inputs, **params})
    cot = rnd(*out.shape)
    (out * cot).sum().backward()
    grads = {k: v.grad for k, v in leaves.items() if v.grad is not None}
    save(name, inputs, params, out, grads, cot)


# ---- layers -------------------------------------------------------------------
def rope_ref(x, dims, traditional, base, scale, offset):
    T = x.shape[-2]
    pos = (torch.arange(T, dtype=torch.float64) + offset) * scale
    inv = base ** (-torch.arange(0, dims, 2, dtype=torch.float64) / dims)
    th = pos[:, None] * inv[None, :]
    c, s = torch.cos(th), torch.sin(th)
    xr, rest = x[..., :dims], x[..., dims:]
    if traditional:
        x1, x2 = xr[..., 0::2], xr[..., 1::2]
        o1, o2 = x1 * c - x2 * s, x1 * s + x2 * c
        o = torch.stack([o1, o2], dim=-1).reshape(xr.shape)
    else:
        h = dims // 2
        x1, x2 = xr[..., :h], xr[..., h:]
        o = torch.cat([x1 * c - x2 * s, x1 * s + x2 * c], dim=-1)
    return torch.cat([o, rest], dim=-1)


def mha_ref(q, k, v, mask, query_proj_weight, key_proj_weight, value_proj_weight, out_proj_weight, H):
    B, L, _ = q.shape
    S = k.shape[1]
    Q = (q @ query_proj_weight.T).reshape(B, L, H, -1).transpose(1, 2)
    K = (k @ key_proj_weight.T).reshape(B, S, H, -1).transpose(1, 2)
    V = (v @ value_proj_weight.T).reshape(B, S, H, -1).transpose(1, 2)
    sc = (Q * math.sqrt(1.0 / Q.shape[-1])) @ K.transpose(-1, -2) + mask
    o = torch.softmax(sc, -1) @ V
    return o.transpose(1, 2).reshape(B, L, -1) @ out_proj_weight.T


def layers():
    layer_case("linear", lambda x, weight, bias: F.linear(x, weight, bias),
               {"x": rnd(2, 3, 8)}, {"weight": rnd(5, 8, scale=0.3), "bias": rnd(5)})
    layer_case("linear_nobias", lambda x, weight: F.linear(x, weight),
               {"x": rnd(4, 8)}, {"weight": rnd(6, 8, scale=0.3)})
    idx = torch.tensor([[1, 0, 5], [5, 2, 2]], dtype=torch.int64)
    layer_case("embedding", lambda idx, weight: F.embedding(idx, weight),
               {"idx": idx}, {"weight": rnd(7, 4)})
    layer_case("embedding_as_linear", lambda x, weight: x @ weight.T,
               {"x": rnd(2, 4)}, {"weight": rnd(7, 4)})
    layer_case("rms_norm", lambda x, weight: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * weight,
               {"x": rnd(3, 4, 16)}, {"weight": 1 + rnd(16, scale=0.1)})
    layer_case("layer_norm", lambda x, weight, bias: F.layer_norm(x, (16,), weight, bias, 1e-5),
               {"x": rnd(3, 4, 16)}, {"weight": 1 + rnd(16, scale=0.1), "bias": rnd(16, scale=0.1)})
    layer_case("layer_norm_noaffine", lambda x: F.layer_norm(x, (16,), None, None, 1e-5),
               {"x": rnd(3, 16)}, {})
    layer_case("rope", lambda x: rope_ref(x, 8, False, 10000.0, 1.0, 0),
               {"x": rnd(2, 3, 5, 8)}, {})
    layer_case("rope_traditional_offset", lambda x: rope_ref(x, 8, True, 10000.0, 1.0, 3),
               {"x": rnd(1, 2, 4, 8)}, {})
    layer_case("rope_partial", lambda x: rope_ref(x, 4, False, 500.0, 0.5, 2),
               {"x": rnd(2, 6, 8)}, {})
    L = 5
    mask = torch.triu(torch.full((L, L), -1e9, dtype=torch.float64), 1)
    layer_case("mha", lambda q, k, v, mask, query_proj_weight, key_proj_weight, value_proj_weight,
               out_proj_weight: mha_ref(q, k, v, mask, query_proj_weight, key_proj_weight,
                                        value_proj_weight, out_proj_weight, 2),
               {"q": rnd(2, L, 8), "k": rnd(2, L, 8), "v": rnd(2, L, 8), "mask": mask},
               {"query_proj_weight": rnd(8, 8, scale=0.3), "key_proj_weight": rnd(8, 8, scale=0.3),
                "value_proj_weight": rnd(8, 8, scale=0.3), "out_proj_weight": rnd(8, 8, scale=0.3)},
               diff_inputs=True)
    acts = {
        "relu": F.relu, "relu6": F.relu6, "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
        "elu": lambda x: F.elu(x, 1.0), "celu": lambda x: F.celu(x, 1.5), "selu": F.selu,
        "gelu": F.gelu, "gelu_approx": lambda x: F.gelu(x, approximate="tanh"),
        "gelu_fast_approx": lambda x: x * torch.sigmoid(1.702 * x), "silu": F.silu,
        "sigmoid": torch.sigmoid, "log_sigmoid": F.logsigmoid, "tanh": torch.tanh,
        "softplus": F.softplus, "softsign": F.softsign, "mish": F.mish,
        "hardswish": F.hardswish, "hard_tanh": F.hardtanh, "glu": lambda x: F.glu(x, -1),
    }
    for name, f in acts.items():
        x = rnd(4, 6, scale=3.0)
        x[0, 0] = 30.0  # large values (softplus/mish stability)
        x[0, 1] = -30.0
        layer_case("act_" + name, lambda x, f=f: f(x), {"x": x}, {})


# ---- losses ---------------------------------------------------------------------
def reduce(loss, reduction):
    return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[reduction]


def loss_case(name, fn, inputs, diff=("logits",)):
    for k in diff:
        inputs[k].requires_grad_()
    out = fn(**inputs)
    out.backward(torch.ones_like(out))
    save(name, inputs, {}, out, {k: inputs[k].grad for k in diff})


def losses():
    N, C = 6, 5
    logits = lambda: rnd(N, C, scale=2.0)
    tgt = torch.tensor([0, 3, 4, 1, 1, 2], dtype=torch.int64)
    for red in ("none", "mean", "sum"):
        loss_case("ce_indices_" + red,
                  lambda logits, targets, red=red: reduce(F.cross_entropy(logits, targets, reduction="none"), red),
                  {"logits": logits(), "targets": tgt})
    loss_case("ce_smoothing_mean",
              lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=0.2),
              {"logits": logits(), "targets": tgt})
    loss_case("ce_weights_sum",
              lambda logits, targets, weights: (F.cross_entropy(logits, targets, reduction="none") * weights).sum(),
              {"logits": logits(), "targets": tgt, "weights": rnd(N).abs()})
    probs = torch.softmax(rnd(N, C), -1).float().double()
    loss_case("ce_probs_mean",
              lambda logits, targets: F.cross_entropy(logits, targets),
              {"logits": logits(), "targets": probs})
    loss_case("ce_probs_smoothing_none",
              lambda logits, targets: F.cross_entropy(logits, targets, label_smoothing=0.1, reduction="none"),
              {"logits": logits(), "targets": probs})
    tig = torch.tensor([0, -100, 4, 1, -100, 2], dtype=torch.int64)
    loss_case("ce_ignore_mean",
              lambda logits, targets: F.cross_entropy(logits, targets, ignore_index=-100),
              {"logits": logits(), "targets": tig})
    loss_case("ce_axis1_3d_mean",  # (B, C, T) with class axis 1
              lambda logits, targets: F.cross_entropy(logits, targets),
              {"logits": rnd(2, C, 3), "targets": torch.tensor([[0, 1, 4], [2, 2, 3]])})
    x = rnd(4, 3, scale=2.0)
    y = (torch.rand(4, 3, generator=g, dtype=torch.float64) > 0.5).double()
    loss_case("bce_logits_mean",
              lambda logits, targets: F.binary_cross_entropy_with_logits(logits, targets),
              {"logits": x.clone(), "targets": y})
    loss_case("bce_logits_weights_none",
              lambda logits, targets, weights: F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weights,
              {"logits": x.clone(), "targets": y, "weights": rnd(4, 3).abs()})
    p = torch.sigmoid(x).float().double()
    loss_case("bce_probs_sum",
              lambda logits, targets: F.binary_cross_entropy(logits, targets, reduction="sum"),
              {"logits": p, "targets": y})
    a, b = rnd(3, 4), rnd(3, 4)
    for red in ("mean", "none"):
        loss_case("mse_" + red, lambda logits, targets, red=red: F.mse_loss(logits, targets, reduction=red),
                  {"logits": a.clone(), "targets": b})
    loss_case("l1_sum", lambda logits, targets: F.l1_loss(logits, targets, reduction="sum"),
              {"logits": a.clone(), "targets": b})
    loss_case("smooth_l1_mean", lambda logits, targets: F.smooth_l1_loss(logits, targets, beta=0.5),
              {"logits": a.clone(), "targets": b})
    lp = torch.log_softmax(rnd(N, C), -1).float().double()
    loss_case("nll_mean", lambda logits, targets: F.nll_loss(logits, targets),
              {"logits": lp.clone(), "targets": tgt})
    lq = torch.log_softmax(rnd(N, C), -1).float().double()
    loss_case("kl_div_sum",
              lambda logits, targets: F.kl_div(logits, targets, reduction="none", log_target=True).sum(),
              {"logits": lp.clone(), "targets": lq})


if __name__ == "__main__":
    os.makedirs(OUT, exist_ok=True)
    layers()
    losses()
    print("wrote", len(os.listdir(OUT)), "files to", os.path.normpath(OUT))
