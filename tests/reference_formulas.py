"""Plain-torch forward passes of LLaDA and Dream written from the published
modeling files' formulas, over state dicts under the *published* tensor names.

These are deliberately independent of transformers: they are what the
``DiffusionLM`` backbones (transformers Llama / Qwen2 with is_causal=False)
are checked against.

LLaDA (LLaDALlamaBlock): pre-norm RMSNorm (fp32 statistics, affine weight),
q/k/v projections without bias, rotary embedding applied in fp32 with
half-split rotation, bidirectional scaled-dot-product attention with a
key-padding bias, ``attn_out``; then RMSNorm, SwiGLU with ``ff_proj`` as the
SiLU branch and ``up_proj`` as the linear branch, ``ff_out``; final ``ln_f``
and the untied ``transformer.ff_out`` head (``wte`` when weight_tying).

Dream (Qwen2 layout): as above with q/k/v biases, ``o_proj``, ``gate/up/down``
names, and logits shifted right by one (position i gets the logits of i-1).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def rms_norm(x, weight, eps):
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


def rotary(q, k, positions, theta):
    # q, k: [B, H, T, D]; positions: [B, T]
    dim = q.shape[-1]
    inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = positions.float()[..., None] * inv_freq  # [B, T, D/2]
    emb = torch.cat([freqs, freqs], dim=-1)[:, None]  # [B, 1, T, D]
    cos, sin = emb.cos(), emb.sin()

    def rot(t):
        t1, t2 = t[..., : dim // 2], t[..., dim // 2:]
        return torch.cat([-t2, t1], dim=-1)

    qf, kf = q.float(), k.float()
    return ((qf * cos) + rot(qf) * sin).to(q.dtype), ((kf * cos) + rot(kf) * sin).to(k.dtype)


def attention(x, wq, wk, wv, wo, n_heads, n_kv, theta, positions, key_mask, bq=None, bk=None, bv=None):
    B, T, D = x.shape
    hd = D // n_heads
    q = F.linear(x, wq, bq).view(B, T, n_heads, hd).transpose(1, 2)
    k = F.linear(x, wk, bk).view(B, T, n_kv, hd).transpose(1, 2)
    v = F.linear(x, wv, bv).view(B, T, n_kv, hd).transpose(1, 2)
    q, k = rotary(q, k, positions, theta)
    if n_kv != n_heads:
        k = k.repeat_interleave(n_heads // n_kv, dim=1)
        v = v.repeat_interleave(n_heads // n_kv, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :].bool(), float("-inf"))
    out = scores.softmax(-1) @ v
    return F.linear(out.transpose(1, 2).reshape(B, T, D), wo)


def _positions(ids, key_mask):
    if key_mask is None:
        return torch.arange(ids.shape[1])[None].expand(ids.shape[0], -1)
    return (key_mask.long().cumsum(-1) - 1).clamp(min=0)


def llada_logits(sd, raw, ids, key_mask=None):
    """LLaDA logits from a published-name state dict and a LLaDA config.json dict."""
    p = "model.transformer."
    n_heads = raw["n_heads"]
    n_kv = raw.get("n_kv_heads") or n_heads
    eps = raw["rms_norm_eps"]
    pos = _positions(ids, key_mask)
    x = F.embedding(ids, sd[p + "wte.weight"])
    for i in range(raw["n_layers"]):
        b = f"{p}blocks.{i}."
        h = rms_norm(x, sd[b + "attn_norm.weight"], eps)
        x = x + attention(h, sd[b + "q_proj.weight"], sd[b + "k_proj.weight"], sd[b + "v_proj.weight"],
                          sd[b + "attn_out.weight"], n_heads, n_kv, raw["rope_theta"], pos, key_mask)
        h = rms_norm(x, sd[b + "ff_norm.weight"], eps)
        x = x + F.linear(F.silu(F.linear(h, sd[b + "ff_proj.weight"])) * F.linear(h, sd[b + "up_proj.weight"]),
                         sd[b + "ff_out.weight"])
    x = rms_norm(x, sd[p + "ln_f.weight"], eps)
    head = sd[p + "wte.weight"] if raw.get("weight_tying") else sd[p + "ff_out.weight"]
    return F.linear(x, head)


def dream_logits(sd, raw, ids, key_mask=None):
    """Dream logits (already shifted right by one) from a Qwen2-name state dict."""
    n_heads = raw["num_attention_heads"]
    n_kv = raw.get("num_key_value_heads") or n_heads
    eps = raw["rms_norm_eps"]
    pos = _positions(ids, key_mask)
    x = F.embedding(ids, sd["model.embed_tokens.weight"])
    for i in range(raw["num_hidden_layers"]):
        b = f"model.layers.{i}."
        a = b + "self_attn."
        h = rms_norm(x, sd[b + "input_layernorm.weight"], eps)
        x = x + attention(h, sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"],
                          sd[a + "o_proj.weight"], n_heads, n_kv, raw["rope_theta"], pos, key_mask,
                          sd[a + "q_proj.bias"], sd[a + "k_proj.bias"], sd[a + "v_proj.bias"])
        h = rms_norm(x, sd[b + "post_attention_layernorm.weight"], eps)
        m = b + "mlp."
        x = x + F.linear(F.silu(F.linear(h, sd[m + "gate_proj.weight"])) * F.linear(h, sd[m + "up_proj.weight"]),
                         sd[m + "down_proj.weight"])
    x = rms_norm(x, sd["model.norm.weight"], eps)
    head = sd["model.embed_tokens.weight"] if raw.get("tie_word_embeddings") else sd["lm_head.weight"]
    logits = F.linear(x, head)
    return torch.cat([logits[:, :1], logits[:, :-1]], dim=1)


def load_published_state_dict(directory):
    """Every tensor of a (sharded) checkpoint folder, under its published names."""
    from pathlib import Path

    from safetensors.torch import load_file

    sd = {}
    for f in sorted(Path(directory).glob("*.safetensors")):
        sd.update(load_file(str(f)))
    return sd
