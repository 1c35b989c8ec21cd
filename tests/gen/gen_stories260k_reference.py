#!/usr/bin/python3
"""Reference output of stories260K (llama2.c legacy format) for tests/test_lm.c.

An independent float64 NumPy implementation of llama2.c's forward pass
(run.c: RMSNorm eps 1e-5, RoPE on interleaved pairs, grouped-query
attention, SwiGLU FFN, shared classifier), reading the .bin directly.

Writes tests/fixtures/lm/:
  stories260k_greedy.json  {"prompt": [1], "tokens": [40 greedy ids],
                            "logit_positions": [...], "min_margin": ...}
  stories260k_logits.npy   float32 (len(positions), vocab): the logits at
                           those positions of the sequence [1] + tokens

usage: gen_stories260k_reference.py [MODEL.bin] [OUT_DIR]
  default model: $MXC_DATA_DIR/models/stories260K/stories260K.bin
  (MXC_DATA_DIR defaults to ../shared/data)
"""
import json
import os
import struct
import sys

import numpy as np

N_TOKENS = 40
LOGIT_POSITIONS = [0, 1, 7, 20, 40]


def read_llama2c(path):
    with open(path, "rb") as f:
        data = f.read()
    dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len = struct.unpack("<7i", data[:28])
    shared = vocab > 0
    vocab = abs(vocab)
    w = np.frombuffer(data, dtype="<f4", offset=28).astype(np.float64)
    head = dim // n_heads
    kv_dim = n_kv_heads * head
    off = 0

    def take(*shape):
        nonlocal off
        n = int(np.prod(shape))
        a = w[off:off + n].reshape(shape)
        off += n
        return a

    p = {}
    p["emb"] = take(vocab, dim)
    p["rms_att"] = take(n_layers, dim)
    p["wq"] = take(n_layers, n_heads * head, dim)
    p["wk"] = take(n_layers, kv_dim, dim)
    p["wv"] = take(n_layers, kv_dim, dim)
    p["wo"] = take(n_layers, dim, n_heads * head)
    p["rms_ffn"] = take(n_layers, dim)
    p["w1"] = take(n_layers, hidden, dim)
    p["w2"] = take(n_layers, dim, hidden)
    p["w3"] = take(n_layers, hidden, dim)
    p["rms_final"] = take(dim)
    take(seq_len * head // 2)  # freq_cis_real (unused)
    take(seq_len * head // 2)  # freq_cis_imag (unused)
    p["cls"] = p["emb"] if shared else take(vocab, dim)
    cfg = dict(dim=dim, hidden=hidden, n_layers=n_layers, n_heads=n_heads,
               n_kv_heads=n_kv_heads, vocab=vocab, seq_len=seq_len, head=head)
    return cfg, p


def rmsnorm(x, weight):
    ss = np.sum(x * x) / x.shape[0] + 1e-5
    return weight * (x / np.sqrt(ss))


def rope_interleaved(vec, pos, head):
    out = vec.copy()
    for i in range(0, vec.shape[0], 2):
        head_dim = i % head
        freq = 1.0 / (10000.0 ** (head_dim / head))
        val = pos * freq
        c, s = np.cos(val), np.sin(val)
        v0, v1 = vec[i], vec[i + 1]
        out[i] = v0 * c - v1 * s
        out[i + 1] = v0 * s + v1 * c
    return out


def forward_sequence(cfg, p, tokens):
    """Runs the tokens one position at a time (as llama2.c does); returns
    the logits (len(tokens), vocab)."""
    L, H, KVH, hd = cfg["n_layers"], cfg["n_heads"], cfg["n_kv_heads"], cfg["head"]
    kv_mul = H // KVH
    kcache = [[] for _ in range(L)]
    vcache = [[] for _ in range(L)]
    out = []
    for pos, tok in enumerate(tokens):
        x = p["emb"][tok].copy()
        for l in range(L):
            xb = rmsnorm(x, p["rms_att"][l])
            q = rope_interleaved(p["wq"][l] @ xb, pos, hd)
            k = rope_interleaved(p["wk"][l] @ xb, pos, hd)
            v = p["wv"][l] @ xb
            kcache[l].append(k)
            vcache[l].append(v)
            K = np.stack(kcache[l])  # (pos+1, kv_dim)
            V = np.stack(vcache[l])
            att_out = np.zeros(H * hd)
            for h in range(H):
                kh = h // kv_mul
                qh = q[h * hd:(h + 1) * hd]
                Kh = K[:, kh * hd:(kh + 1) * hd]
                Vh = V[:, kh * hd:(kh + 1) * hd]
                scores = Kh @ qh / np.sqrt(hd)
                scores = np.exp(scores - scores.max())
                scores /= scores.sum()
                att_out[h * hd:(h + 1) * hd] = scores @ Vh
            x = x + p["wo"][l] @ att_out
            xb = rmsnorm(x, p["rms_ffn"][l])
            h1 = p["w1"][l] @ xb
            h3 = p["w3"][l] @ xb
            hb = (h1 / (1.0 + np.exp(-h1))) * h3
            x = x + p["w2"][l] @ hb
        x = rmsnorm(x, p["rms_final"])
        out.append(p["cls"] @ x)
    return np.stack(out)


def main():
    data_dir = os.environ.get("MXC_DATA_DIR", "../shared/data")
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        data_dir, "models/stories260K/stories260K.bin")
    out_dir = sys.argv[2] if len(sys.argv) > 2 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "lm")
    cfg, p = read_llama2c(model)
    # greedy: feed BOS, then each argmax (no stopping, exactly N_TOKENS)
    seq = [1]
    margins = []
    for _ in range(N_TOKENS):
        logits = forward_sequence(cfg, p, seq)[-1]
        top2 = np.sort(logits)[-2:]
        margins.append(float(top2[1] - top2[0]))
        seq.append(int(np.argmax(logits)))
    all_logits = forward_sequence(cfg, p, seq)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "stories260k_greedy.json"), "w") as f:
        json.dump({"model": "stories260K.bin", "config": cfg, "prompt": [1],
                   "tokens": seq[1:], "logit_positions": LOGIT_POSITIONS,
                   "min_margin": min(margins)}, f, indent=1)
        f.write("\n")
    np.save(os.path.join(out_dir, "stories260k_logits.npy"),
            all_logits[LOGIT_POSITIONS].astype(np.float32))
    print("tokens:", seq[1:])
    print("min top-2 margin: %.6g" % min(margins))


if __name__ == "__main__":
    main()
