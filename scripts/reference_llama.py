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
    if kind == "yarn":
        return yarn(d, theta, scaling)[0]
    raise SystemExit(f"rope_scaling type {kind!r} is not in the reference")


def yarn(d, theta, scaling, max_pos=None):
    """YaRN's inverse frequencies and attention factor, as transformers (v5)
    _compute_yarn_parameters defines them (float64)."""
    max_pos = max_pos or YARN_MAX_POS[0]
    original = scaling.get("original_max_position_embeddings") or max_pos
    factor = scaling.get("factor") or max_pos / original

    def get_mscale(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = scaling.get("attention_factor")
    if attention is None:
        m, m_all = scaling.get("mscale"), scaling.get("mscale_all_dim")
        attention = get_mscale(factor, m) / get_mscale(factor, m_all) if m and m_all else get_mscale(factor)
    beta_fast = scaling.get("beta_fast") or 32
    beta_slow = scaling.get("beta_slow") or 1

    def correction(rot):
        return (d * math.log(original / (rot * 2 * math.pi))) / (2 * math.log(theta))

    low, high = correction(beta_fast), correction(beta_slow)
    if scaling.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    pos_freqs = theta ** (np.arange(0, d, 2, dtype=np.float64) / d)
    extrapolation = 1.0 / pos_freqs
    interpolation = 1.0 / (factor * pos_freqs)
    ramp = np.clip((np.arange(d // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    keep = 1 - ramp
    return interpolation * (1 - keep) + extrapolation * keep, attention


# max_position_embeddings of the model being computed (yarn's default
# original context), set by forward().
YARN_MAX_POS = [None]


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
    YARN_MAX_POS[0] = cfg.get("max_position_embeddings", 2048)
    scaling = cfg.get("rope_scaling") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    # YaRN scales the rotated query and key, so the logits by its square.
    attention = yarn(head_dim, theta, scaling)[1] if kind == "yarn" else 1.0
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
        q = proj("q_proj").reshape(t, heads, head_dim)
        k = proj("k_proj").reshape(t, kv_heads, head_dim)
        # Qwen3: RMSNorm over each query and key head, before the rotation.
        if p + "self_attn.q_norm.weight" in w:
            q = rmsnorm(q, w[p + "self_attn.q_norm.weight"], eps)
            k = rmsnorm(k, w[p + "self_attn.k_norm.weight"], eps)
        q = rope(q, pos, theta, scaling)
        k = rope(k, pos, theta, scaling)
        v = proj("v_proj").reshape(t, kv_heads, head_dim)
        k = np.repeat(k, heads // kv_heads, axis=1)
        v = np.repeat(v, heads // kv_heads, axis=1)
        scores = np.einsum("thd,shd->hts", q, k) * attention**2 / np.sqrt(head_dim) + mask
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        o = np.einsum("hts,shd->thd", scores, v).reshape(t, heads * head_dim)
        x = x + o @ w[p + "self_attn.o_proj.weight"].T
        if p + "self_attn.o_proj.bias" in w:
            x = x + w[p + "self_attn.o_proj.bias"]
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
