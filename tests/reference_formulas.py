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


# --------------------------------------------------------------------------
# Fast-dLLM's block-wise KV cache, written from its semantics
# (NVlabs/Fast-dLLM llada/generate.py generate_with_prefix_cache /
# generate_with_dual_cache): a full pass at each block start stores every
# layer's keys and values (rotary applied); later passes of the block compute
# only some rows, whose queries attend to the stored keys/values of the
# context columns plus the rows' own fresh keys/values.
# One unpadded row at a time, so nothing here is shared with the batched code.
# --------------------------------------------------------------------------


def _layer_weights(family, sd, raw, i):
    if family == "llada":
        b = f"model.transformer.blocks.{i}."
        return dict(norm1=sd[b + "attn_norm.weight"], wq=sd[b + "q_proj.weight"], wk=sd[b + "k_proj.weight"],
                    wv=sd[b + "v_proj.weight"], wo=sd[b + "attn_out.weight"], bq=None, bk=None, bv=None,
                    norm2=sd[b + "ff_norm.weight"], gate=sd[b + "ff_proj.weight"], up=sd[b + "up_proj.weight"],
                    down=sd[b + "ff_out.weight"])
    b = f"model.layers.{i}."
    a = b + "self_attn."
    return dict(norm1=sd[b + "input_layernorm.weight"], wq=sd[a + "q_proj.weight"], wk=sd[a + "k_proj.weight"],
                wv=sd[a + "v_proj.weight"], wo=sd[a + "o_proj.weight"], bq=sd[a + "q_proj.bias"],
                bk=sd[a + "k_proj.bias"], bv=sd[a + "v_proj.bias"], norm2=sd[b + "post_attention_layernorm.weight"],
                gate=sd[b + "mlp.gate_proj.weight"], up=sd[b + "mlp.up_proj.weight"], down=sd[b + "mlp.down_proj.weight"])


def _arch(family, raw):
    if family == "llada":
        return raw["n_layers"], raw["n_heads"], raw.get("n_kv_heads") or raw["n_heads"]
    return raw["num_hidden_layers"], raw["num_attention_heads"], raw.get("num_key_value_heads") or raw["num_attention_heads"]


def _embed_and_head(family, sd, raw):
    if family == "llada":
        p = "model.transformer."
        head = sd[p + "wte.weight"] if raw.get("weight_tying") else sd[p + "ff_out.weight"]
        return sd[p + "wte.weight"], sd[p + "ln_f.weight"], head
    head = sd["model.embed_tokens.weight"] if raw.get("tie_word_embeddings") else sd["lm_head.weight"]
    return sd["model.embed_tokens.weight"], sd["model.norm.weight"], head


def kv_forward(family, sd, raw, ids, first=0, context=None):
    """Hidden-state logits (not shifted) of columns ``first ..`` of one row ``ids`` ([1, L]).

    ``context`` None: a full pass (``first`` must be 0); returns (logits, kv)
    with kv the list of each layer's (keys, values) [1, H_kv, L, D].
    Otherwise ``context = (kv, cols)``: only the columns ``first .. L-1`` of
    ``ids`` are computed; at every layer their queries attend to the stored
    keys/values of ``cols`` plus their own. Returns (logits, None).
    """
    n_layers, n_heads, n_kv = _arch(family, raw)
    eps, theta = raw["rms_norm_eps"], raw["rope_theta"]
    wte, norm_f, head = _embed_and_head(family, sd, raw)
    rows = ids[:, first:]
    T = rows.shape[1]
    pos = torch.arange(first, first + T)[None]
    x = F.embedding(rows, wte)
    stored = []
    for i in range(n_layers):
        w = _layer_weights(family, sd, raw, i)
        h = rms_norm(x, w["norm1"], eps)
        D = h.shape[-1]
        hd = D // n_heads
        q = F.linear(h, w["wq"], w["bq"]).view(1, T, n_heads, hd).transpose(1, 2)
        k = F.linear(h, w["wk"], w["bk"]).view(1, T, n_kv, hd).transpose(1, 2)
        v = F.linear(h, w["wv"], w["bv"]).view(1, T, n_kv, hd).transpose(1, 2)
        q, k = rotary(q, k, pos, theta)
        if context is None:
            stored.append((k, v))
            keys, values = k, v
        else:
            kv, cols = context
            idx = torch.tensor(cols, dtype=torch.long)
            keys = torch.cat([kv[i][0][:, :, idx], k], dim=2)
            values = torch.cat([kv[i][1][:, :, idx], v], dim=2)
        if n_kv != n_heads:
            keys = keys.repeat_interleave(n_heads // n_kv, dim=1)
            values = values.repeat_interleave(n_heads // n_kv, dim=1)
        att = ((q @ keys.transpose(-1, -2)) / math.sqrt(hd)).softmax(-1) @ values
        x = x + F.linear(att.transpose(1, 2).reshape(1, T, D), w["wo"])
        h = rms_norm(x, w["norm2"], eps)
        x = x + F.linear(F.silu(F.linear(h, w["gate"])) * F.linear(h, w["up"]), w["down"])
    logits = F.linear(rms_norm(x, norm_f, eps), head)
    return logits, (stored if context is None else None)


def fast_dllm_decode(family, sd, raw, prompt, mask_id, gen_length, block_length, cache,
                     steps=None, threshold=None):
    """Greedy confidence-order decode of one prompt with Fast-dLLM's cache semantics.

    ``cache``: "none" (every step a full pass), "prefix" or "dual". The
    schedule is LLaDA's linear split of ``steps`` per block, or the threshold
    rule (the best masked token plus every other with p >= threshold). As in
    the toolkit's sampler, the mask token is never proposed. Dream's logit for
    column c comes from the hidden state at c - 1, so its recomputed rows start
    one column before the block. Returns (response tokens, forward passes).
    """
    shift = 1 if family == "dream" else 0
    P = len(prompt)
    x = torch.tensor([list(prompt) + [mask_id] * gen_length])
    L = x.shape[1]
    n_blocks = gen_length // block_length
    nfe = 0
    for blk in range(n_blocks):
        s, e = P + blk * block_length, P + (blk + 1) * block_length
        if steps is not None:
            per = steps // n_blocks
            base, rem = divmod(block_length, per)
            counts = [base + (1 if i < rem else 0) for i in range(per)]
        step = 0
        kv = None
        while bool((x[0, s:e] == mask_id).any()):
            if cache == "none" or step == 0:
                logits, kv_new = kv_forward(family, sd, raw, x)
                if step == 0:
                    kv = kv_new
                block_logits = logits[0, s - shift:e - shift]
            else:
                q0 = s - shift
                q1 = e if cache == "dual" else L
                cols = list(range(q0)) + list(range(q1, L))
                logits, _ = kv_forward(family, sd, raw, x[:, :q1], first=q0, context=(kv, cols))
                block_logits = logits[0, :block_length]
            nfe += 1
            lg = block_logits.float().clone()
            p = lg.softmax(-1)
            lg[:, mask_id] = float("-inf")
            x0 = lg.argmax(-1)
            conf = p.gather(-1, x0[:, None]).squeeze(-1)
            masked = x[0, s:e] == mask_id
            conf = torch.where(masked, conf, torch.full_like(conf, float("-inf")))
            n_masked = int(masked.sum())
            if threshold is not None:
                k = max(1, int(((conf >= threshold) & masked).sum()))
            else:
                k = min(counts[min(step, len(counts) - 1)], n_masked)
            order = torch.argsort(conf, descending=True, stable=True)[:k]
            x[0, s + order] = x0[order]
            step += 1
    return x[0, P:].tolist(), nfe


# --------------------------------------------------------------------------
# The original decoding loops at temperature 0, written from LLaDA's
# generate.py::generate and Dream's generation_utils.py::_sample, driven by a
# logits callable. Both originals batch: prompts left-padded with the pad
# token and an attention mask that is 0 on the padding (LLaDA extends it with
# ones over the answer; Dream with ones over the masks, and builds its
# pairwise mask and cumsum positions from it, which at every unpadded row is
# what a key-padding mask with re-based positions gives).
# --------------------------------------------------------------------------


def llada_generate_loop(logits_fn, prompt, attention_mask=None, steps=128, gen_length=128,
                        block_length=128, remasking="low_confidence", mask_id=126336,
                        eos_id=126081, eot_id=126348, logits_eos_inf=False,
                        confidence_eos_eot_inf=False, generator=None):
    """LLaDA's loop: ``logits_fn(x, attention_mask)`` -> [B, L, V]; returns the canvas.

    Per block the masked count is split evenly over the block's steps (the
    remainder one each on the first steps); each step proposes the argmax of
    every position (the mask token included), scores it by its softmax
    probability in the logits' dtype (or a uniform draw for 'random'), gives
    -inf to every position past the block and to every unmasked one, and
    writes the top-k of each row (torch.topk over the whole row).
    """
    B, P = prompt.shape
    x = torch.full((B, P + gen_length), mask_id, dtype=torch.long)
    x[:, :P] = prompt
    if attention_mask is not None:
        attention_mask = torch.cat(
            [attention_mask, torch.ones((B, gen_length), dtype=attention_mask.dtype)], dim=1)
    assert gen_length % block_length == 0
    n_blocks = gen_length // block_length
    assert steps % n_blocks == 0
    per_block = steps // n_blocks
    neg_inf = float("-inf")
    for blk in range(n_blocks):
        block_end = P + (blk + 1) * block_length
        in_block = (x[:, block_end - block_length:block_end] == mask_id).sum(dim=1)
        plan = []
        for r in range(B):
            base, extra = divmod(int(in_block[r]), per_block)
            plan.append([base + (1 if i < extra else 0) for i in range(per_block)])
        for i in range(per_block):
            is_mask = x == mask_id
            logits = logits_fn(x, attention_mask)
            if logits_eos_inf:
                logits[:, :, eos_id] = neg_inf
            x0 = torch.argmax(logits, dim=-1)  # temperature 0: the logits themselves
            if confidence_eos_eot_inf:
                # generate.py's chained assignment; at temperature 0 its two targets
                # are the same tensor, so both EOS and EoT lose their mass
                logits[:, :, eos_id] = neg_inf
                logits[:, :, eot_id] = neg_inf
            if remasking == "low_confidence":
                probs = F.softmax(logits, dim=-1)
                score = torch.gather(probs, -1, x0.unsqueeze(-1)).squeeze(-1)
            elif remasking == "random":
                score = torch.rand((B, x.shape[1]), generator=generator)
            else:
                raise NotImplementedError(remasking)
            score[:, block_end:] = neg_inf
            x0 = torch.where(is_mask, x0, x)
            score = torch.where(is_mask, score, neg_inf)
            take = torch.zeros_like(is_mask)
            for r in range(B):
                take[r, torch.topk(score[r], k=plan[r][i]).indices] = True
            x[take] = x0[take]
    return x


def _dream_sample_tokens(logits, top_p=None, top_k=None, margin=False, neg_entropy=False):
    """Dream's sample_tokens at temperature 0: (confidence, argmax)."""
    lowest = torch.finfo(logits.dtype).min
    if top_p is not None and top_p < 1:
        ordered, order = torch.sort(logits, descending=True)
        drop = torch.cumsum(F.softmax(ordered, dim=-1), dim=-1) > top_p
        drop[..., 1:] = drop[..., :-1].clone()
        drop[..., 0] = False
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(-1, order, drop), lowest)
    if top_k is not None:
        k = min(top_k, logits.shape[-1])
        logits = logits.masked_fill(logits < torch.topk(logits, k)[0][..., -1:], lowest)
    probs = torch.softmax(logits, dim=-1)
    confidence, x0 = probs.max(dim=-1)
    if margin:
        top = torch.sort(probs, dim=-1, descending=True)[0]
        confidence = top[:, 0] - top[:, 1]
    if neg_entropy:
        confidence = torch.sum(probs * torch.log(probs + 1e-10), dim=-1)
    return confidence, x0


def dream_sample_loop(raw_logits_fn, input_ids, attention_mask=None, max_new_tokens=128, steps=128,
                      mask_id=151666, alg="entropy", eps=1e-3, alg_temp=None, top_p=None, top_k=None,
                      generator=None, shift=True):
    """Dream's loop: ``raw_logits_fn(x, key_mask)`` -> the model's own (unshifted)
    logits [B, L, V]; the loop shifts them right by one (``shift=False`` drives
    the same loop with a model whose position i predicts token i, e.g. LLaDA).
    Returns the canvas.

    The whole canvas is one block. Step i runs over timesteps linspace(1, eps,
    steps + 1): 'origin' reveals each masked position with probability 1 - s/t
    (all at the last step); the other algs commit, in every row, the top
    int(mean masked count of the batch * (1 - s/t)) positions (int(mean) at the
    last step) of a [B, L] confidence that is -inf off the masks, taking
    whatever torch.topk returns (a row with fewer masks gets unmasked columns,
    which receive the mask id).
    """
    B = input_ids.shape[0]
    x = F.pad(input_ids, (0, max_new_tokens), value=mask_id)
    key_mask = None
    if attention_mask is not None and bool((attention_mask == 0).any()):
        key_mask = F.pad(attention_mask, (0, max_new_tokens), value=1)
    timesteps = torch.linspace(1, eps, steps + 1)
    for i in range(steps):
        is_mask = x == mask_id
        raw = raw_logits_fn(x, key_mask)
        logits = torch.cat([raw[:, :1], raw[:, :-1]], dim=1) if shift else raw
        masked_logits = logits[is_mask]
        t, s = timesteps[i], timesteps[i + 1]
        if alg == "origin":
            p_transfer = 1 - s / t if i < steps - 1 else 1
            x0 = torch.full((masked_logits.shape[0],), mask_id, dtype=torch.long)
            reveal = torch.rand((masked_logits.shape[0],), generator=generator) < p_transfer
            x0[reveal] = _dream_sample_tokens(masked_logits[reveal], top_p, top_k)[1]
            x[is_mask] = x0
            continue
        confidence, x0 = _dream_sample_tokens(masked_logits, top_p, top_k,
                                              margin=alg == "topk_margin",
                                              neg_entropy=alg == "entropy")
        mean_masked = is_mask.sum() / B
        n = int(mean_masked * (1 - s / t)) if i < steps - 1 else int(mean_masked)
        row_conf = torch.full(x.shape, float("-inf"), dtype=logits.dtype)
        row_conf[is_mask] = confidence
        if n > 0:
            if alg_temp is None or alg_temp == 0:
                picked = torch.topk(row_conf, n).indices
            else:
                picked = torch.multinomial(F.softmax(row_conf / alg_temp, dim=-1), n, generator=generator)
            proposal = torch.full_like(x, mask_id)
            proposal[is_mask] = x0
            r = torch.arange(B)[:, None].expand_as(picked)
            x[r, picked] = proposal[r, picked]
    return x
