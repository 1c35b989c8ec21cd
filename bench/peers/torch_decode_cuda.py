"""PyTorch peers of mxc's GPU decode / prefill benchmark (bench/run-gpu.sh).

    python3 bench/peers/torch_decode_cuda.py MODEL_DIR [--prompt 128] [--gen 256]
        [--prefill 512,2048] [--hf] [--compile] [--json OUT.json]

MODEL_DIR is a Hugging Face Llama directory (bench/peers/make_llama_hf.py).
Prints one line per measurement and, with --json, writes them all.

  loop   the fastest plain PyTorch decode loop we could write: our own Llama
         forward over the checkpoint's tensors (bf16), a static KV cache
         (B=1, full length, written in place with index_copy_), flash SDPA
         (enable_gqa) for the prompt and grouped attention over the whole
         cache with an additive mask for each new token, and the
         decode step captured once as a CUDA graph and replayed per token
         (greedy argmax inside the graph, so nothing but the graph launch
         per token). With --compile the decode step is torch.compile'd
         (default mode, static shapes) before capture.
  hf     transformers' generate with cache_implementation="static" (which
         compiles the decoding step itself), greedy.
  bw     device-to-device copy bandwidth (read + write bytes / time) of a
         1 GiB buffer: the bound for decode is bw / bytes read per token.
  gemm   cuBLAS bf16 GEMM throughput (torch.matmul, 4096^3).
"""
import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import load_file


def sync():
    torch.cuda.synchronize()


def measure_bw():
    n = 1 << 30
    a = torch.empty(n, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync()
    reps = 20
    t = time.perf_counter()
    for _ in range(reps):
        b.copy_(a)
    sync()
    dt = (time.perf_counter() - t) / reps
    return 2 * n / dt


def measure_gemm(n=4096):
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    for _ in range(5):
        a @ b
    sync()
    reps = 50
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync()
    dt = (time.perf_counter() - t) / reps
    return 2 * n ** 3 / dt


class Llama:
    """Greedy Llama over a checkpoint's tensors with a static KV cache."""

    def __init__(self, d, max_len):
        cfg = json.load(open(os.path.join(d, "config.json")))
        sd = {}
        for f in sorted(os.listdir(d)):
            if f.endswith(".safetensors"):
                sd.update(load_file(os.path.join(d, f), device="cuda"))
        self.c = cfg
        self.L = cfg["num_hidden_layers"]
        self.H = cfg["num_attention_heads"]
        self.Hkv = cfg["num_key_value_heads"]
        self.D = cfg.get("head_dim") or cfg["hidden_size"] // self.H
        self.eps = cfg["rms_norm_eps"]
        dt = torch.bfloat16
        g = lambda k: sd[k].to(dt)
        self.emb = g("model.embed_tokens.weight")
        self.head = g("lm_head.weight") if "lm_head.weight" in sd else self.emb
        self.norm = g("model.norm.weight")
        self.layers = []
        for i in range(self.L):
            p = f"model.layers.{i}."
            qkv = torch.cat([g(p + "self_attn.q_proj.weight"), g(p + "self_attn.k_proj.weight"),
                             g(p + "self_attn.v_proj.weight")], 0).contiguous()
            gu = torch.cat([g(p + "mlp.gate_proj.weight"), g(p + "mlp.up_proj.weight")],
                           0).contiguous()
            self.layers.append(dict(
                ln1=g(p + "input_layernorm.weight"), ln2=g(p + "post_attention_layernorm.weight"),
                qkv=qkv, o=g(p + "self_attn.o_proj.weight"), gu=gu,
                down=g(p + "mlp.down_proj.weight")))
        del sd
        self.max_len = max_len
        self.kc = [torch.zeros(1, self.Hkv, max_len, self.D, dtype=dt, device="cuda")
                   for _ in range(self.L)]
        self.vc = [torch.zeros_like(k) for k in self.kc]
        rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
        theta = cfg.get("rope_theta") or rs.get("rope_theta", 10000.0)
        inv = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.float64)
                                           / self.D))
        if rs.get("rope_type", rs.get("type")) == "llama3":
            f, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
            om = rs["original_max_position_embeddings"]
            wl = 2 * math.pi / inv
            lw, hw = om / lo, om / hi
            smooth = (om / wl - lo) / (hi - lo)
            scaled = torch.where(wl > lw, inv / f, inv)
            mid = (1 - smooth) * inv / f + smooth * inv
            inv = torch.where((wl <= lw) & (wl >= hw), mid, scaled)
        pos = torch.arange(max_len, dtype=torch.float64)
        ang = torch.outer(pos, inv)
        self.cos = torch.cat([ang.cos(), ang.cos()], -1).to("cuda", torch.float32)
        self.sin = torch.cat([ang.sin(), ang.sin()], -1).to("cuda", torch.float32)

    def rms(self, x, w):
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * w

    def rope(self, x, pos):
        c, s = self.cos[pos][None, None], self.sin[pos][None, None]
        h = x.shape[-1] // 2
        xf = x.float()
        rot = torch.cat([-xf[..., h:], xf[..., :h]], -1)
        return (xf * c + rot * s).to(x.dtype)

    def forward(self, ids, pos, mask):
        """ids (1, T), pos (T,) int64 positions; T == 1: decode at pos with mask
        (1, 1, 1, max_len) additive over the cache; T > 1: a prompt from 0."""
        x = self.emb[ids]
        T = ids.shape[1]
        qd, kd = self.H * self.D, self.Hkv * self.D
        for i, l in enumerate(self.layers):
            h = self.rms(x, l["ln1"])
            qkv = h @ l["qkv"].t()
            q = qkv[..., :qd].view(1, T, self.H, self.D).transpose(1, 2)
            k = qkv[..., qd:qd + kd].view(1, T, self.Hkv, self.D).transpose(1, 2)
            v = qkv[..., qd + kd:].view(1, T, self.Hkv, self.D).transpose(1, 2)
            q, k = self.rope(q, pos), self.rope(k, pos)
            self.kc[i].index_copy_(2, pos, k)
            self.vc[i].index_copy_(2, pos, v)
            if T == 1:  # decode: grouped attention over the whole static cache
                G = self.H // self.Hkv
                qg = q.view(1, self.Hkv, G, self.D)
                s = (qg @ self.kc[i].transpose(-1, -2)).float() * (self.D ** -0.5)
                p = torch.softmax(s + mask[0, 0], -1).to(q.dtype)
                a = (p @ self.vc[i]).view(1, self.H, 1, self.D)
            else:  # prefill from position 0: flash attention on the new keys
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            x = x + a.transpose(1, 2).reshape(1, T, qd) @ l["o"].t()
            h = self.rms(x, l["ln2"])
            gu = h @ l["gu"].t()
            gate, up = gu.chunk(2, -1)
            x = x + (F.silu(gate) * up) @ l["down"].t()
        return self.rms(x, self.norm) @ self.head.t()

    def bytes_per_token(self):
        n = sum(t.numel() * t.element_size() for l in self.layers for t in l.values())
        n += self.head.numel() * self.head.element_size() + self.norm.numel() * 2
        return n


@torch.no_grad()
def run_loop(d, prompt, gen, prefills, use_compile):
    max_len = max([prompt + gen] + prefills)
    m = Llama(d, max_len)
    V = m.emb.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, V, (1, prompt), generator=g).cuda()
    step = m.forward  # prefill: eager (flash SDPA, cuBLAS)
    dstep = torch.compile(m.forward, dynamic=False) if use_compile else m.forward
    # static decode inputs
    tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
    pos = torch.zeros(1, dtype=torch.long, device="cuda")
    mask = torch.full((1, 1, 1, max_len), float("-inf"), device="cuda", dtype=torch.bfloat16)
    ar = torch.arange(max_len, device="cuda")

    def decode_step():
        mask.copy_(torch.where(ar <= pos, 0.0, float("-inf")).to(torch.bfloat16)[None, None, None])
        logits = dstep(tok, pos, mask)
        tok.copy_(logits[:, -1].argmax(-1, keepdim=True))

    # warm up (also compiles), then capture
    for _ in range(3):
        decode_step()
    sync()
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            decode_step()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        decode_step()
    res = {}
    for trial in range(2):
        sync()
        t0 = time.perf_counter()
        lg = step(ids, torch.arange(prompt, device="cuda"), None)
        tok.copy_(lg[:, -1].argmax(-1, keepdim=True))
        sync()
        t1 = time.perf_counter()
        out = []
        for i in range(gen):
            pos.fill_(prompt + i)
            graph.replay()
            if i < 8:
                out.append(tok)
        sync()
        t2 = time.perf_counter()
        res = dict(prompt_tps=prompt / (t1 - t0), gen_tps=gen / (t2 - t1))
    for p in prefills:
        pids = torch.randint(0, V, (1, p), generator=g).cuda()
        pp = torch.arange(p, device="cuda")
        pm = None
        for _ in range(2):
            step(pids, pp, pm)
        sync()
        t0 = time.perf_counter()
        reps = 3
        for _ in range(reps):
            step(pids, pp, pm)
        sync()
        res[f"prefill{p}_tps"] = p * reps / (time.perf_counter() - t0)
    res["bytes_per_token"] = m.bytes_per_token()
    return res


@torch.no_grad()
def run_hf(d, prompt, gen):
    """generate() with a static cache: transformers compiles the decoding
    step itself (torch.compile, CUDA graphs) when the cache is static."""
    from transformers import AutoModelForCausalLM
    m = AutoModelForCausalLM.from_pretrained(d, dtype=torch.bfloat16).cuda().eval()
    V = m.config.vocab_size
    g = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, V, (1, prompt), generator=g).cuda()
    kw = dict(max_new_tokens=gen, min_new_tokens=gen, do_sample=False,
              cache_implementation="static", pad_token_id=0)
    t = time.perf_counter()
    m.generate(ids, **kw)  # warm-up (compiles)
    sync()
    warm = time.perf_counter() - t
    # time prefill alone (1 new token) and the whole generation
    kw1 = dict(kw, max_new_tokens=1, min_new_tokens=1)
    sync()
    t0 = time.perf_counter()
    m.generate(ids, **kw1)
    sync()
    tp = time.perf_counter() - t0
    t0 = time.perf_counter()
    m.generate(ids, **kw)
    sync()
    tt = time.perf_counter() - t0
    return dict(prompt_tps=prompt / tp, gen_tps=(gen - 1) / max(tt - tp, 1e-9), warmup_s=warm)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--gen", type=int, default=256)
    ap.add_argument("--prefill", default="512,2048")
    ap.add_argument("--hf", action="store_true")
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    prefills = [int(x) for x in a.prefill.split(",") if x]
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    out["bw_GBps"] = measure_bw() / 1e9
    out["gemm_bf16_TFLOPs"] = measure_gemm() / 1e12
    print(f"device {out['device']}  torch {out['torch']}  copy bw {out['bw_GBps']:.0f} GB/s  "
          f"bf16 GEMM {out['gemm_bf16_TFLOPs']:.0f} TFLOP/s", flush=True)
    r = run_loop(a.model, a.prompt, a.gen, prefills, False)
    out["loop"] = r
    print("loop (eager + CUDA graph):", json.dumps(r), flush=True)
    if a.compile:
        r = run_loop(a.model, a.prompt, a.gen, prefills, True)
        out["loop_compile"] = r
        print("loop (torch.compile + CUDA graph):", json.dumps(r), flush=True)
    if a.hf:
        try:
            r = run_hf(a.model, a.prompt, a.gen)
            out["hf"] = r
            print("transformers generate (static cache):", json.dumps(r), flush=True)
        except Exception as e:  # keep the other measurements
            print("transformers generate failed:", repr(e)[:400], flush=True)
    if a.json:
        json.dump(out, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
