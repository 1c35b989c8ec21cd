#!/usr/bin/python3
"""torch_decode.py — the PyTorch peer of bench/run-decode.sh: a plain Llama
forward (RMSNorm, llama3/default RoPE, GQA attention with a KV cache, SwiGLU
MLP, tied or separate LM head) over an HF-layout model directory
(config.json + *.safetensors, float weights), prefill of P random ids then G
greedy decode steps, timed like `mxc bench`. Prints one JSON line:
{"prompt_tps", "generation_tps", "peak_rss_gb", ...}.

  torch_decode.py MODEL_DIR [-p 128] [-g 128] [-n 1] [--threads 2]
                  [--dtype bfloat16|float32]
"""
import argparse
import glob
import json
import math
import os
import resource
import time

import numpy as np
import torch

DT = {"BF16": np.int16, "F16": np.float16, "F32": np.float32}


def load_safetensors(path, dtype):
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        hdr = json.loads(f.read(n))
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    for k, v in hdr.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        raw = np.frombuffer(mm[8 + n + a:8 + n + b], dtype=DT[v["dtype"]]).reshape(v["shape"])
        t = torch.from_numpy(raw.copy())
        if v["dtype"] == "BF16":
            t = t.view(torch.bfloat16)
        out[k] = t.to(dtype)
    return out


def rope_inv_freq(c, hd):
    base = c.get("rope_theta", 10000.0)
    inv = 1.0 / (base ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    rs = c.get("rope_scaling") or {}
    if rs.get("rope_type", rs.get("type")) == "llama3":
        f, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        smooth = (old / wl - lo) / (hi - lo)
        scaled = torch.where(wl > old / lo, inv / f, inv)
        mid = (wl <= old / lo) & (wl >= old / hi)
        inv = torch.where(mid, (1 - smooth) * inv / f + smooth * inv, scaled)
    return inv.float()


class Llama:
    def __init__(self, d, dtype):
        c = json.load(open(os.path.join(d, "config.json")))
        w = {}
        for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
            w.update(load_safetensors(p, dtype))
        self.c, self.w, self.dt = c, w, dtype
        self.H, self.KV = c["num_attention_heads"], c["num_key_value_heads"]
        self.hd = c.get("head_dim") or c["hidden_size"] // self.H
        self.L, self.eps = c["num_hidden_layers"], c["rms_norm_eps"]
        self.inv = rope_inv_freq(c, self.hd)
        self.head = w.get("lm_head.weight", w["model.embed_tokens.weight"])

    def norm(self, x, wt):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(self.dt) * wt

    def rope(self, x, pos):  # x (B, h, T, hd), rotate-half (HF layout)
        ang = pos[:, None].float() * self.inv[None, :]
        cos, sin = torch.cos(ang).repeat(1, 2), torch.sin(ang).repeat(1, 2)
        x1, x2 = x[..., : self.hd // 2], x[..., self.hd // 2:]
        rot = torch.cat((-x2, x1), dim=-1)
        return (x.float() * cos + rot.float() * sin).to(self.dt)

    def forward(self, ids, cache, start):
        w, T = self.w, ids.shape[1]
        x = w["model.embed_tokens.weight"][ids]
        pos = torch.arange(start, start + T)
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = self.norm(x, w[p + "input_layernorm.weight"])
            q = torch.nn.functional.linear(h, w[p + "self_attn.q_proj.weight"])
            k = torch.nn.functional.linear(h, w[p + "self_attn.k_proj.weight"])
            v = torch.nn.functional.linear(h, w[p + "self_attn.v_proj.weight"])
            q = self.rope(q.view(1, T, self.H, self.hd).transpose(1, 2), pos)
            k = self.rope(k.view(1, T, self.KV, self.hd).transpose(1, 2), pos)
            v = v.view(1, T, self.KV, self.hd).transpose(1, 2)
            kc, vc = cache[l]
            kc[:, :, start:start + T] = k
            vc[:, :, start:start + T] = v
            K, V = kc[:, :, :start + T], vc[:, :, :start + T]
            rep = self.H // self.KV
            K, V = K.repeat_interleave(rep, dim=1), V.repeat_interleave(rep, dim=1)
            s = (q.float() @ K.float().transpose(-1, -2)) / math.sqrt(self.hd)
            if T > 1:
                mask = torch.full((T, start + T), float("-inf")).triu(start + 1)
                s = s + mask
            a = (torch.softmax(s, dim=-1) @ V.float()).to(self.dt)
            a = a.transpose(1, 2).reshape(1, T, self.H * self.hd)
            x = x + torch.nn.functional.linear(a, w[p + "self_attn.o_proj.weight"])
            h = self.norm(x, w[p + "post_attention_layernorm.weight"])
            g = torch.nn.functional.linear(h, w[p + "mlp.gate_proj.weight"])
            u = torch.nn.functional.linear(h, w[p + "mlp.up_proj.weight"])
            x = x + torch.nn.functional.linear(torch.nn.functional.silu(g) * u,
                                               w[p + "mlp.down_proj.weight"])
        x = self.norm(x[:, -1:], w["model.norm.weight"])
        return torch.nn.functional.linear(x, self.head).float()

    def new_cache(self, n):
        return [(torch.zeros(1, self.KV, n, self.hd, dtype=self.dt),
                 torch.zeros(1, self.KV, n, self.hd, dtype=self.dt)) for _ in range(self.L)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-p", type=int, default=128)
    ap.add_argument("-g", type=int, default=128)
    ap.add_argument("-n", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--prompt-ids", help="comma-separated ids (greedy ids are printed)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    m = Llama(a.model, getattr(torch, a.dtype))
    vocab = m.c["vocab_size"]
    res = []
    with torch.inference_mode():
        if a.prompt_ids:
            ids = torch.tensor([[int(t) for t in a.prompt_ids.split(",")]])
            cache = m.new_cache(ids.shape[1] + a.g)
            logits, out, pos = m.forward(ids, cache, 0), [], ids.shape[1]
            for _ in range(a.g):
                t = int(logits[0, -1].argmax())
                out.append(t)
                logits = m.forward(torch.tensor([[t]]), cache, pos)
                pos += 1
            print(" ".join(map(str, out)))
            return
        m.forward(torch.tensor([[1, 2]]), m.new_cache(4), 0)  # warm-up
        for _ in range(a.n):
            ids = torch.randint(0, vocab, (1, a.p))
            cache = m.new_cache(a.p + a.g)
            t0 = time.perf_counter()
            logits = m.forward(ids, cache, 0)
            tok = logits[0, -1].argmax()
            t1 = time.perf_counter()
            pos = a.p
            for _ in range(a.g):
                logits = m.forward(tok.view(1, 1), cache, pos)
                tok = logits[0, -1].argmax()
                pos += 1
            t2 = time.perf_counter()
            res.append((a.p / (t1 - t0), a.g / (t2 - t1)))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print("RESULT " + json.dumps({"peer": "torch", "version": torch.__version__, "dtype": a.dtype,
                      "threads": a.threads, "prompt": a.p, "gen": a.g,
                      "prompt_tps": sum(r[0] for r in res) / len(res),
                      "generation_tps": sum(r[1] for r in res) / len(res),
                      "peak_rss_gb": rss}))


if __name__ == "__main__":
    main()
