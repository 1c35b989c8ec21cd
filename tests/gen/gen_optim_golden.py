#!/usr/bin/env python3
"""Golden fixture for mxc's optimizers and schedules (tests/test_optim.c).

Parameters w (4, 6) and b (6,) in float32 are updated 10 times with the
same given gradient sequence by each optimizer configuration; the fixture
holds the parameters after 10 steps. Each configuration is computed by
  - PyTorch (python3-torch) where its semantics equal MLX's:
      SGD (plain, momentum + weight decay, nesterov), Adam with
      bias_correction=True, AdamW with bias_correction=True (decoupled
      weight decay), AdamW with a warmup + cosine schedule (lr set per
      step to schedule(step), step counted from 0 as MLX);
  - a NumPy implementation of mlx.optimizers where PyTorch differs or has
    no such optimizer: SGD with dampening (MLX's first step damps, torch's
    does not), Adam/AdamW with MLX's default bias_correction=False, Lion,
    Adafactor (both defaults and an explicit-lr, first-moment variant).
  The NumPy versions of the torch-covered configurations are checked
  against torch here (assert), so both references agree.
Schedules: values for steps 0..24 from the mlx.optimizers.schedulers
formulas (float64); exponential and step decay checked against torch's
ExponentialLR / StepLR.

Writes tests/fixtures/optim/optim_golden.npz (a zip of .npy files):
  init.w, init.b, grad.<t>.w, grad.<t>.b (t = 0..9), <config>.w, <config>.b,
  sched.<name> (25 values, float64).
Run: /usr/bin/python3 tests/gen/gen_optim_golden.py
"""
import math
import os

import numpy as np
import torch

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "optim")
STEPS = 10
f32 = np.float32


# ---- schedules (mlx.optimizers.schedulers) ---------------------------------
def exponential_decay(init, rate):
    return lambda s: init * rate ** s


def step_decay(init, rate, size):
    return lambda s: init * rate ** (s // size)


def cosine_decay(init, steps, end=0.0):
    def f(s):
        s = min(s, steps)
        return end + 0.5 * (1.0 + math.cos(math.pi / steps * s)) * (init - end)
    return f


def linear_schedule(init, end, steps):
    return lambda s: min(s, steps) * ((end - init) / steps) + init


def join_schedules(schedules, boundaries):
    def f(s):
        out = schedules[0](s)
        for b, sch in zip(boundaries, schedules[1:]):
            if s >= b:
                out = sch(s - b)
        return out
    return f


WARMUP_COSINE = join_schedules([linear_schedule(0.0, 1e-2, 3), cosine_decay(1e-2, 5, 1e-3)], [3])


# ---- NumPy implementations of mlx.optimizers (float32) ----------------------
def run_numpy(kind, cfg, params, grads):
    p = {k: v.copy() for k, v in params.items()}
    st = {k: {} for k in p}
    for t in range(STEPS):
        lr = f32(cfg.get("sched", lambda s: cfg.get("lr", 0.0))(t))
        step = t + 1
        for k in p:
            g, x, s = grads[t][k], p[k], st[k]
            if kind == "sgd":
                if cfg.get("wd", 0):
                    g = g + f32(cfg["wd"]) * x
                mom = cfg.get("momentum", 0.0)
                if mom <= 0:
                    p[k] = x - lr * g
                    continue
                v = f32(mom) * s.get("v", np.zeros_like(x))
                d = cfg.get("dampening", 0.0)
                v = v + (f32(1 - d) * g if d > 0 else g)
                upd = g + f32(mom) * v if cfg.get("nesterov") else v
                s["v"] = v
                p[k] = x - lr * upd
            elif kind in ("adam", "adamw"):
                b1, b2, eps = 0.9, 0.999, 1e-8
                if kind == "adamw":
                    x = x * f32(1 - float(lr) * cfg["wd"])
                m = f32(b1) * s.get("m", np.zeros_like(x)) + f32(1 - b1) * g
                v = f32(b2) * s.get("v", np.zeros_like(x)) + f32(1 - b2) * g * g
                s["m"], s["v"] = m, v
                if cfg.get("bc"):
                    c1 = f32(float(lr) / (1 - b1 ** step))
                    c2 = f32(1 / math.sqrt(1 - b2 ** step))
                    p[k] = x - (c1 * m) / (np.sqrt(v) * c2 + f32(eps))
                else:
                    p[k] = x - (lr * m) / (np.sqrt(v) + f32(eps))
            elif kind == "lion":
                b1, b2, wd = 0.9, 0.99, cfg.get("wd", 0.0)
                m0 = s.get("m", np.zeros_like(x))
                c = f32(b1) * m0 + f32(1 - b1) * g
                s["m"] = f32(b2) * m0 + f32(1 - b2) * g
                if wd > 0:
                    x = x * f32(1 - float(lr) * wd)
                p[k] = x - lr * np.sign(c)
            elif kind == "adafactor":
                p[k] = adafactor_step(cfg, x, g, s, step, float(lr))
    return p


def rms(a):
    return np.sqrt(np.mean(np.square(a), dtype=f32)).astype(f32)


def adafactor_step(cfg, x, g, s, step, lr):
    eps1, eps2, clip, decay = 1e-30, 1e-3, 1.0, -0.8
    rel = lr
    if cfg.get("relative_step", True):
        rel = min(1e-2, 1.0 / math.sqrt(step))
    lr_t = f32(rel)
    if cfg.get("scale_parameter", True):
        lr_t = np.maximum(f32(eps2), rms(x)) * f32(rel)
    beta2 = f32(1.0 - step ** decay)
    upd = np.square(g) + f32(eps1)
    if g.ndim >= 2:
        r = beta2 * s.get("row", np.zeros(x.shape[:-1], f32)) + (f32(1) - beta2) * upd.mean(-1, dtype=f32)
        c = beta2 * s.get("col", np.zeros(x.shape[:-2] + x.shape[-1:], f32)) + (f32(1) - beta2) * upd.mean(-2, dtype=f32)
        s["row"], s["col"] = r, c
        rf = 1 / np.sqrt(r / r.mean(-1, keepdims=True, dtype=f32))
        cf = 1 / np.sqrt(c)
        upd = (rf[..., :, None] * cf[..., None, :]) * g
    else:
        v = beta2 * s.get("v", np.zeros_like(x)) + (f32(1) - beta2) * upd
        s["v"] = v
        upd = (1 / np.sqrt(v)) * g
    upd = upd / np.maximum(f32(1.0), rms(upd) / f32(clip))
    upd = lr_t * upd
    if cfg.get("beta1") is not None:
        b1 = cfg["beta1"]
        e = f32(b1) * s.get("e", np.zeros_like(x)) + f32(1 - b1) * upd
        s["e"] = e
        upd = e
    if cfg.get("wd", 0):
        x = x + x * (f32(-cfg["wd"]) * lr_t)
    return (x - upd).astype(f32)


# ---- PyTorch ----------------------------------------------------------------
def run_torch(make, params, grads, sched=None):
    ts = {k: torch.tensor(v) for k, v in params.items()}
    for v in ts.values():
        v.requires_grad_(True)
    opt = make(list(ts.values()))
    for t in range(STEPS):
        if sched is not None:
            for grp in opt.param_groups:
                grp["lr"] = sched(t)
        for k, v in ts.items():
            v.grad = torch.tensor(grads[t][k])
        opt.step()
    return {k: v.detach().numpy().copy() for k, v in ts.items()}


def main():
    rng = np.random.default_rng(1234)
    params = {"w": rng.standard_normal((4, 6)).astype(f32),
              "b": rng.standard_normal(6).astype(f32)}
    grads = [{k: (rng.standard_normal(v.shape) * (0.5 + 0.1 * t)).astype(f32)
              for k, v in params.items()} for t in range(STEPS)]
    out = {"init.w": params["w"], "init.b": params["b"]}
    for t in range(STEPS):
        for k in params:
            out[f"grad.{t}.{k}"] = grads[t][k]

    O = torch.optim
    configs = {
        # name: (torch factory or None, numpy kind, numpy cfg, schedule)
        "sgd": (lambda ps: O.SGD(ps, lr=0.1), "sgd", {"lr": 0.1}, None),
        "sgd_momentum": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
                         "sgd", {"lr": 0.05, "momentum": 0.9, "wd": 0.01}, None),
        "sgd_nesterov": (lambda ps: O.SGD(ps, lr=0.05, momentum=0.9, nesterov=True),
                         "sgd", {"lr": 0.05, "momentum": 0.9, "nesterov": True}, None),
        "sgd_dampening": (None, "sgd", {"lr": 0.05, "momentum": 0.9, "dampening": 0.5}, None),
        "adam_bc": (lambda ps: O.Adam(ps, lr=0.01), "adam", {"lr": 0.01, "bc": True}, None),
        "adam": (None, "adam", {"lr": 0.01}, None),
        "adamw_bc": (lambda ps: O.AdamW(ps, lr=0.01, weight_decay=0.1), "adamw",
                     {"lr": 0.01, "wd": 0.1, "bc": True}, None),
        "adamw": (None, "adamw", {"lr": 0.01, "wd": 0.01}, None),
        "adamw_sched": (lambda ps: O.AdamW(ps, lr=0.0, weight_decay=0.1), "adamw",
                        {"sched": WARMUP_COSINE, "wd": 0.1, "bc": True}, WARMUP_COSINE),
        "lion": (None, "lion", {"lr": 0.01, "wd": 0.1}, None),
        "adafactor": (None, "adafactor", {}, None),
        "adafactor_lr": (None, "adafactor", {"lr": 0.01, "relative_step": False,
                                             "scale_parameter": False, "beta1": 0.9,
                                             "wd": 0.01}, None),
    }
    for name, (make, kind, cfg, sched) in configs.items():
        ref = run_numpy(kind, cfg, params, grads)
        if make is not None:
            tref = run_torch(make, params, grads, sched)
            for k in ref:
                assert np.allclose(ref[k], tref[k], rtol=1e-5, atol=1e-6), (name, k)
            ref = tref  # the fixture holds PyTorch's numbers
        for k, v in ref.items():
            out[f"{name}.{k}"] = v.astype(f32)

    scheds = {
        "exponential": exponential_decay(0.1, 0.9),
        "step": step_decay(0.1, 0.5, 4),
        "cosine": cosine_decay(0.1, 10, 0.01),
        "linear": linear_schedule(0.0, 0.1, 8),
        "join": WARMUP_COSINE,
    }
    for name, f in scheds.items():
        out[f"sched.{name}"] = np.array([f(s) for s in range(25)], np.float64)
    # exponential and step decay as torch's schedulers
    for name, mk in (("exponential", lambda o: O.lr_scheduler.ExponentialLR(o, 0.9)),
                     ("step", lambda o: O.lr_scheduler.StepLR(o, 4, 0.5))):
        o = O.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        s = mk(o)
        vals = []
        for _ in range(25):
            vals.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        assert np.allclose(vals, out[f"sched.{name}"], rtol=1e-12), name
    os.makedirs(OUT, exist_ok=True)
    np.savez(os.path.join(OUT, "optim_golden.npz"), **out)


if __name__ == "__main__":
    main()
