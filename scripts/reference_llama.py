#!/usr/bin/env python3
"""An independent NumPy implementation of the Llama forward pass, used by the
worker's tests as the reference: reads a Hugging Face directory (config.json,
model.safetensors) and token ids on stdin (JSON: {"ids": [...], "greedy": N}),
and prints the last position's logits and N greedy tokens as JSON.

Computes in float64 with a full causal recompute (no KV cache, no paging), so
it shares nothing with the Rust engine but the file formats."""
import json
import math
import struct
import sys

import numpy as np


def load_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        buf = data[base + start : base + end]
        dtype = meta["dtype"]
        if dtype == "F32":
            a = np.frombuffer(buf, "<f4")
        elif dtype == "F16":
            a = np.frombuffer(buf, "<f2")
        elif dtype == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"unsupported dtype {dtype} for {name}")
        out[name] = a.astype(np.float64).reshape(meta["shape"])
    return out


def rmsnorm(x, w, eps):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * w


def inv_freq(d, theta, scaling):
    """Rotary inverse frequencies, with rope_scaling as transformers'
    _compute_linear_scaling_rope_parameters / _compute_llama3_parameters
    define them (float64)."""
    inv = 1.0 / (theta ** (np.arange(0, d, 2, dtype=np.float64) / d))
    kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
    if kind in ("default", "dynamic"):
        return inv
    if kind == "linear":
        return inv / scaling["factor"]
    if kind == "llama3":
        factor = scaling["factor"]
        low = scaling["low_freq_factor"]
        high = scaling["high_freq_factor"]
        old = scaling["original_max_position_embeddings"]
        low_wavelen, high_wavelen = old / low, old / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
        return np.where(medium, smoothed, scaled)
    raise SystemExit(f"rope_scaling type {kind!r} is not in the reference")


def rope(x, positions, theta, scaling=None):
    d = x.shape[-1]
    inv = inv_freq(d, theta, scaling)
    ang = np.outer(positions, inv)
    ang = np.concatenate([ang, ang], -1)[:, None, :]
    half = d // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], -1)
    return x * np.cos(ang) + rotated * np.sin(ang)


def forward(cfg, w, ids):
    hidden = cfg["hidden_size"]
    heads = cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", heads)
    head_dim = cfg.get("head_dim", hidden // heads)
    eps = cfg.get("rms_norm_eps", 1e-6)
    theta = cfg.get("rope_theta", 10000.0)
    t = len(ids)
    pos = np.arange(t)
    x = w["model.embed_tokens.weight"][ids]
    mask = np.triu(np.full((t, t), -np.inf), 1)
    for layer in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        h = rmsnorm(x, w[p + "input_layernorm.weight"], eps)

        def proj(name):
            y = h @ w[p + f"self_attn.{name}.weight"].T
            bias = w.get(p + f"self_attn.{name}.bias")
            return y if bias is None else y + bias

        scaling = cfg.get("rope_scaling")
        q = rope(proj("q_proj").reshape(t, heads, head_dim), pos, theta, scaling)
        k = rope(proj("k_proj").reshape(t, kv_heads, head_dim), pos, theta, scaling)
        v = proj("v_proj").reshape(t, kv_heads, head_dim)
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", scores, v).reshape(t, heads * head_dim)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        h = rmsnorm(x, w[p + "post_attention_layernorm.weight"], eps)
        gate = h @ w[p + "mlp.gate_proj.weight"].T
        up = h @ w[p + "mlp.up_proj.weight"].T
        x = x + ((gate / (1.0 + np.exp(-gate))) * up) @ w[p + "mlp.down_proj.weight"].T
    x = rmsnorm(x, w["model.norm.weight"], eps)
    head = w.get("lm_head.weight", w["model.embed_tokens.weight"])
    return x[-1] @ head.T


def main():
    model_dir = sys.argv[1]
    req = json.load(sys.stdin)
    cfg = json.load(open(f"{model_dir}/config.json"))
    w = load_safetensors(f"{model_dir}/model.safetensors")
    ids = list(req["ids"])
    logits = forward(cfg, w, ids)
    greedy = []
    for _ in range(req.get("greedy", 0)):
        nxt = int(np.argmax(forward(cfg, w, ids + greedy)))
        greedy.append(nxt)
    json.dump({"logits": logits.tolist(), "greedy": greedy}, sys.stdout)


if __name__ == "__main__":
    main()
