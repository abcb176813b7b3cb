"""The five training objectives as small functions over tensors.

*Views* choose, from a batch and a ``torch.Generator``, which response tokens
the model sees (``known``) and which it is scored on (``targets``); *losses*
are pure functions of the per-target fp32 log-probs / entropies
(:func:`token_stats`, computed at the targets only). Shapes: ``B`` rows, ``G``
response tokens per row, ``K`` packed target slots (``valid [B, K]``);
``order [B, G]`` is the decoding rank (:func:`tabom.trajectories.decode_order`),
``steps [B, G]`` the step map.

Normalisation:

* ``sft`` (SFT-GT, SFT-SD): LLaDA's SFT form. t ~ U(0, 1), mask probability
  p = (1 - eps) t + eps (eps = 1e-3), each response token masked independently
  (prompt never); per row, sum over masked tokens of CE / p, divided by that
  row's response length (EOS padding included); mean over rows.
* ``dinfer``: uniform NLL, mean over all target tokens of the batch.
* ``tabom``: reconstruction = per row mean over the window N of -log p (times
  |N| / w under ``window_truncated: weight``), mean over rows; ranking = per
  row mean over its strict pairs of max(0, m + H_i - H_j), mean over rows
  with at least one pair (0 if none); total = recon + lambda * rank.
* ``t3d``: DDO with per-sample mean log p over the masked tokens (as T3D),
  mean over rows that have a target; path term = mean over decode-order
  levels of the mean CE of the tokens decoded by that level, mean over rows;
  total = DDO + lambda_path * path.
* The reported ``ce`` of every method is the unweighted mean CE over all of
  its target tokens.

Padding and windows. A row's content length (``stop_lengths``) counts the
positions up to and including its first stop token (EOS / end-of-turn; the
whole canvas when none); every later position is padding. Defaults first,
the legacy value (reproduced bit for bit) in brackets:

* ``pad_keep: 2`` [None = every position]: T3D's ``post_num``; the TABOM paper
  is silent (its TDS, Eqs. 10-11, drops all padding). TABOM: windows and pairs
  use only the eligible positions (:func:`eligible_mask`); the input state
  stays the true trajectory state, other masked tokens stay masked with no
  loss. T3D: masked padding beyond the first ``pad_keep`` (position order)
  stays masked with no loss and rows left with no target leave the DDO mean
  (as T3D); the path term skips all padding.
* TABOM's segment start (:func:`tabom_starts`): each distinct window N with
  equal probability, in the latest state before N's first token (so H(i |
  x_s) is exact there, Eq. 7); with every position eligible this is the
  paper's "s uniform over the steps".
* ``window`` / ``window_frac``: w absolute or max(1, round(window_frac *
  canvas)) half up (the paper: 32 of 256); neither: 32.
* ``window_truncated: weight`` [keep], for windows that reach the end of the
  eligible tokens with fewer than w: ``keep`` plain mean (the last token
  weighs up to H_w x a middle one), ``full`` only starts with min(w,
  #eligible) tokens (a ramp at both ends), ``weight`` |N| / w (expected weight
  min(r+1, w) / (w m), flat past the first w - 1 tokens). No effect with
  ``window_mode: global``.
* T3D (``train/prepare.py::collect_training_data``,
  ``train/self_ddo_sdar_full.py::compute_path_loss_from_step_map``):
  ``t3d_mask_from: first`` [last] masks the ``int(r * n_block)``
  earliest-decoded tokens of each block; ``path_block: 8`` [None = the canvas
  as one block] is the block of that masking and of the path levels:
  ceil(b / path_k) per block, level l pooling every block's first (l + 1)
  path_k targets (T3D pools its per-device batch of 1; here each row alone,
  then rows averaged). Deviation: T3D also scores the visible positions of a
  level; here only the masked targets.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """fp32 log-softmax of gathered logits [B, K, V] (only the K target rows)."""
    z = logits.float()
    return F.log_softmax(z / temperature if temperature != 1.0 else z, dim=-1)


def gather_logprobs(logp_all: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) [B, K] from :func:`log_probs`."""
    return logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_of(logp_all: torch.Tensor) -> torch.Tensor:
    """Predictive entropy [B, K] from :func:`log_probs`; differentiable."""
    return -(logp_all.exp() * logp_all).sum(-1)


def token_stats(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0):
    """(log p(target) [B, K], entropy [B, K]) in fp32, one log-softmax."""
    logp_all = log_probs(logits, temperature)
    return gather_logprobs(logp_all, targets), entropy_of(logp_all)


def pack(mask: torch.Tensor, min_k: int = 1):
    """(idx [B, K], valid [B, K]): the True positions of each row of ``mask``
    packed left (K = largest count, at least ``min_k``)."""
    B, G = mask.shape
    counts = mask.sum(-1)
    K = min(max(int(counts.max()) if B else 0, min_k), G)
    # stable sort puts True (key 0) first, in position order
    key = (~mask).long() * (G + 1) + torch.arange(G, device=mask.device)
    idx = key.argsort(dim=-1)[:, :K]
    valid = torch.arange(K, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx, valid


def sft_view(resp_mask: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-3):
    """(known, targets, p): each response token masked with p = (1-eps) t + eps."""
    B, G = resp_mask.shape
    p = (1 - eps) * torch.rand(B, generator=generator) + eps
    masked = (torch.rand(B, G, generator=generator) < p.unsqueeze(1)) & resp_mask.cpu()
    return ~masked & resp_mask.cpu(), masked, p


def _boundaries(order_row: torch.Tensor, steps_row: torch.Tensor, n: int) -> list[int]:
    """Cut points c (0 <= c < n) of the trajectory states: the first c tokens
    in decoding order unmasked, the rest not."""
    by_rank = torch.empty(n, dtype=torch.long)
    by_rank[order_row[:n]] = steps_row[:n]
    return [0] + [c for c in range(1, n) if by_rank[c] != by_rank[c - 1]]


def _draw(seq: list, generator: torch.Generator | None):
    return seq[int(torch.randint(len(seq), (1,), generator=generator))]


WINDOW_TRUNCATED = ("weight", "keep", "full")
T3D_MASK_FROM = ("first", "last")
DEFAULT_WINDOW = 32  # the paper's w (on a 256-token canvas)


def window_from_frac(window_frac: float, canvas: int) -> int:
    """w = max(1, round(window_frac * canvas)), rounded half up."""
    return max(1, int(math.floor(window_frac * canvas + 0.5)))


def eligible_mask(stop_lengths: torch.Tensor, lengths: torch.Tensor, pad_keep: int | None,
                  G: int | None = None) -> torch.Tensor:
    """[B, G] bool: positions up to and including the first stop token plus at
    most ``pad_keep`` padding positions (``None``: every real position)."""
    G = int(lengths.max()) if G is None else G
    pos = torch.arange(G).unsqueeze(0)
    lengths = lengths.cpu().unsqueeze(1)
    if pad_keep is None:
        return pos < lengths
    if pad_keep < 0:
        raise ValueError(f"pad_keep={pad_keep} must be >= 0 or None")
    return pos < torch.minimum(stop_lengths.cpu().unsqueeze(1) + pad_keep, lengths)


def tabom_starts(rank: torch.Tensor, steps: torch.Tensor, n: int, eligible: torch.Tensor | None,
                 window: int, window_mode: str = "local", truncated: str = "keep") -> list[int]:
    """The segment starts (cut points) of one row: per distinct window N the
    latest state before N's first token, among the states with an eligible
    masked token; ``truncated="full"``: only windows of min(w, #eligible)."""
    cuts = _boundaries(rank, steps, n)
    if eligible is None:  # every position eligible: one window per state
        starts, m, before = cuts, n, {c: c for c in cuts}
    else:
        elig_ranks = torch.sort(rank[:n][eligible[:n]]).values
        m = int(elig_ranks.numel())
        counts = torch.searchsorted(elig_ranks, torch.tensor(cuts, dtype=elig_ranks.dtype))
        before = dict(zip(cuts, counts.tolist()))  # eligible tokens decoded before each cut
        latest: dict[int, int] = {}
        for c in cuts:
            if before[c] < m:
                latest[before[c]] = c  # cuts ascend: the last one wins
        starts = sorted(latest.values())
    if window_mode == "local" and truncated == "full":
        starts = [c for c in starts if m - before[c] >= min(window, m)]
    return starts


def tabom_segment(rank: torch.Tensor, n: int, eligible: torch.Tensor | None, start: int,
                  window: int | None):
    """(known [n], targets [n]) at cut ``start``: N = the next ``window``
    eligible tokens in decoding order (``None``: all the remaining ones)."""
    rank = rank[:n]
    known = rank < start
    cand = ~known if eligible is None else (~known & eligible[:n])
    if window is not None:  # keep the ``window`` candidates of lowest rank
        big = torch.where(cand, rank, torch.full_like(rank, n + 1))
        cut = torch.sort(big).values[min(window, n) - 1] if n else 0
        cand = cand & (rank <= cut)
    return known, cand


def tabom_view(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor, window,
               window_mode: str = "local", generator: torch.Generator | None = None,
               eligible: torch.Tensor | None = None, truncated: str = "keep"):
    """(known, targets) of TABOM's segment per row: a start drawn uniformly
    over :func:`tabom_starts`, then :func:`tabom_segment` (all eligible tokens
    with ``window_mode="global"``). ``window``: an int or a [B] tensor;
    ``eligible`` [B, G] or ``None`` (all)."""
    if window_mode not in ("local", "global"):
        raise ValueError(f"window_mode={window_mode!r} must be 'local' or 'global'")
    if truncated not in WINDOW_TRUNCATED:
        raise ValueError(f"window_truncated={truncated!r} must be one of {list(WINDOW_TRUNCATED)}")
    B = order.shape[0]
    wins = [int(w) for w in window] if torch.is_tensor(window) and window.dim() else [int(window)] * B
    if window_mode == "local" and min(wins, default=1) < 1:
        raise ValueError(f"window={min(wins)} must be >= 1")
    known = torch.zeros(order.shape, dtype=torch.bool)
    targets = torch.zeros(order.shape, dtype=torch.bool)
    for b in range(B):
        n = int(lengths[b])
        elig = None if eligible is None else eligible[b, :n].cpu()
        starts = tabom_starts(order[b], steps[b], n, elig, wins[b], window_mode, truncated)
        if starts:  # else no eligible token at all: the row has no target
            known[b, :n], targets[b, :n] = tabom_segment(order[b], n, elig, _draw(starts, generator),
                                                         None if window_mode == "global" else wins[b])
    return known, targets


def dinfer_view(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None):
    """dInfer's compressed transition: two trajectory states s (earlier, more
    masked) and s' (later); input x_s; targets = tokens unmasked between them."""
    known = torch.zeros(order.shape, dtype=torch.bool)
    targets = torch.zeros(order.shape, dtype=torch.bool)
    for b in range(order.shape[0]):
        n = int(lengths[b])
        rank, cuts = order[b, :n], _boundaries(order[b], steps[b], n)
        i = int(torch.randint(len(cuts), (1,), generator=generator))
        c1, c2 = cuts[i], _draw(cuts[i + 1:] + [n], generator)
        known[b, :n] = rank < c1
        targets[b, :n] = (rank >= c1) & (rank < c2)
    return known, targets


def t3d_view(order: torch.Tensor, lengths: torch.Tensor, ratios=(1.0, 0.75, 0.5, 0.25),
             power: float = 8.0, generator: torch.Generator | None = None, mask_from: str = "last",
             block: int | None = None, stop_lengths: torch.Tensor | None = None,
             pad_keep: int | None = None):
    """(known, targets) of T3D's "trace" masking: a ratio r drawn from ``ratios``
    with probability proportional to r**power; the earliest- (``mask_from=
    "first"``) or latest-decoded ceil(r * n) tokens (at least 1) of the canvas
    (``block=None``) or int(r * n_block) of each block of b positions (a row
    left with none gets one). ``pad_keep``: only the first ``pad_keep`` masked
    padding positions (after ``stop_lengths``) are targets."""
    if mask_from not in T3D_MASK_FROM:
        raise ValueError(f"t3d_mask_from={mask_from!r} must be one of {list(T3D_MASK_FROM)}")
    if block is not None and block < 1:
        raise ValueError(f"path_block={block} must be >= 1 or None")
    B, G = order.shape
    w = torch.tensor([float(r) ** power for r in ratios])
    pick = torch.multinomial(w / w.sum(), B, replacement=True, generator=generator)
    known = torch.zeros(B, G, dtype=torch.bool)
    targets = torch.zeros(B, G, dtype=torch.bool)
    for b in range(B):
        n = int(lengths[b])
        r = float(ratios[int(pick[b])])
        rank = order[b, :n]
        if block is None:
            n_mask = max(1, math.ceil(r * n))
            masked = rank >= n - n_mask if mask_from == "last" else rank < n_mask
        else:
            masked = torch.zeros(n, dtype=torch.bool)
            for lo in range(0, n, block):
                blk = rank[lo:lo + block]
                k = int(blk.numel() * r)
                if k:
                    local = blk.argsort().argsort()  # 0 = decoded first within the block
                    masked[lo:lo + block] = local < k if mask_from == "first" else local >= blk.numel() - k
            if not masked.any() and n:
                masked = rank == (0 if mask_from == "first" else n - 1)
        target = masked.clone()
        if pad_keep is not None:
            if stop_lengths is None:
                raise ValueError("t3d_view: pad_keep needs stop_lengths")
            pad = torch.arange(n) >= int(stop_lengths[b])
            masked_pad = masked & pad
            target &= ~(masked_pad & (masked_pad.long().cumsum(0) > pad_keep))
        known[b, :n] = ~masked
        targets[b, :n] = target
    return known, targets


def _ce(logp: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean -log p over the valid slots of the batch."""
    return (-logp * valid).sum() / valid.sum().clamp(min=1)


def sft_loss(logp: torch.Tensor, valid: torch.Tensor, p_mask: torch.Tensor,
             lengths: torch.Tensor) -> dict:
    """NELBO: mean over rows of (sum over masked tokens of -log p / p_mask) / length."""
    nll = -logp * valid
    per_row = nll.sum(-1) / p_mask.to(nll) / lengths.to(nll).clamp(min=1)
    return {"loss": per_row.mean(), "ce": _ce(logp, valid).detach()}


def dinfer_loss(logp: torch.Tensor, valid: torch.Tensor) -> dict:
    """Uniform NLL of the tokens unmasked between the two states."""
    loss = _ce(logp, valid)
    return {"loss": loss, "ce": loss.detach()}


def ranking_pairs(steps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: both valid and steps_i < steps_j (ties form no pair)."""
    return (steps.unsqueeze(-1) < steps.unsqueeze(-2)) & (valid.unsqueeze(-1) & valid.unsqueeze(-2))


PAIR_TIE_TOL = 1e-2  # nats: entropy gaps below this count as ties in the pair accuracy


def ranking_loss(entropy: torch.Tensor, steps: torch.Tensor, valid: torch.Tensor,
                 margin: float, tie_tol: float = PAIR_TIE_TOL) -> dict:
    """Hinge max(0, m + H_i - H_j) over strict pairs (i before j): the loss
    (per-row pair mean, averaged over rows with pairs), the pair count and the
    pair accuracy (share of H_i < H_j among the pairs whose entropies differ
    by at least ``tie_tol``, numerical ties count neither way; NaN if none)."""
    pairs = ranking_pairs(steps, valid)
    diff = entropy.unsqueeze(-1) - entropy.unsqueeze(-2)  # H_i - H_j
    hinge = F.relu(margin + diff) * pairs
    n_row = pairs.sum((-1, -2))
    has = n_row > 0
    loss = (hinge.sum((-1, -2)) / n_row.clamp(min=1))[has].mean() if bool(has.any()) else entropy.sum() * 0.0
    with torch.no_grad():
        decided = pairs & (diff.abs() >= tie_tol)
        n_dec = decided.sum()
        acc = ((diff < 0) & decided).sum().float() / n_dec if int(n_dec) else torch.tensor(float("nan"))
    return {"loss": loss, "pair_acc": acc, "pairs": int(pairs.sum())}


def tabom_loss(logp: torch.Tensor, entropy: torch.Tensor, steps: torch.Tensor,
               valid: torch.Tensor, lam: float = 1.0, margin: float = 0.2,
               tie_tol: float = PAIR_TIE_TOL, recon_weight: torch.Tensor | None = None) -> dict:
    """L = L_recon + lambda * L_rank; ``recon_weight`` [B] scales each row's
    reconstruction mean (``window_truncated: weight``: |N| / w)."""
    nll = -logp * valid
    per_row = nll.sum(-1) / valid.sum(-1).clamp(min=1)
    if recon_weight is not None:
        per_row = per_row * recon_weight.to(per_row)
    recon = per_row[valid.any(-1)].mean()
    rank = ranking_loss(entropy, steps, valid, margin, tie_tol)
    loss = recon + lam * rank["loss"] if lam else recon
    return {"loss": loss, "recon": recon.detach(), "rank": rank["loss"].detach(),
            "ce": _ce(logp, valid).detach(), "pair_acc": rank["pair_acc"],
            "pairs": rank["pairs"]}


def ddo_loss(lp_real: torch.Tensor, lp_real_ref: torch.Tensor, lp_fake: torch.Tensor,
             lp_fake_ref: torch.Tensor, beta: float = 0.1, alpha: float = 0.5) -> torch.Tensor:
    """DDO with the implicit discriminator sigma(beta (log p_theta - log p_ref)):
    mean over rows of -log sigma(beta d_real) - alpha log(1 - sigma(beta d_fake))."""
    real = F.softplus(-beta * (lp_real - lp_real_ref))
    fake = F.softplus(beta * (lp_fake - lp_fake_ref))
    return (real + alpha * fake).mean()


def path_consistency_loss(logp: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor,
                          k: int = 4, block: int | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
    """T3D's path term: level l holds the first (l+1) k targets in decoding
    order of the row (``block=None``) or, pooled, of each canvas block
    (``positions // block``, ceil(block / k) levels); mean CE of each level,
    averaged over levels, then over rows with a target."""
    if k < 1:
        raise ValueError(f"path_k={k} must be >= 1")
    n = valid.sum(-1)
    if block is None:
        # position of each target in decoding order among this row's targets
        big = torch.where(valid, rank, torch.full_like(rank, torch.iinfo(torch.long).max))
        local = big.argsort(-1).argsort(-1)  # 0 = decoded first
        levels = (n + k - 1) // k
    else:
        if block < 1:
            raise ValueError(f"path_block={block} must be >= 1")
        if positions is None:
            raise ValueError("path_consistency_loss: block needs the target positions")
        blk = torch.where(valid, positions // block, torch.zeros_like(positions))
        n_blk = int(blk.max()) + 1 if blk.numel() else 1
        # order by (block, rank): the rank within the block is the global
        # position in that order minus the targets of the earlier blocks
        key = torch.where(valid, blk * (int(rank.max()) + 2 if rank.numel() else 1) + rank,
                          torch.full_like(rank, torch.iinfo(torch.long).max))
        local_all = key.argsort(-1).argsort(-1)
        per_blk = torch.zeros(logp.shape[0], n_blk, dtype=torch.long, device=logp.device)
        per_blk.scatter_add_(1, blk, valid.long())
        local = local_all - (per_blk.cumsum(-1) - per_blk).gather(1, blk)
        # every level of a row with a target is non-empty (level 0 holds the
        # first min(k, n_block) targets of each block)
        levels = torch.where(n > 0, (block + k - 1) // k, 0)
    L = int(levels.max()) if levels.numel() else 0
    total = logp.new_zeros(logp.shape[0])
    for lvl in range(L):
        inside = valid & (local < (lvl + 1) * k)
        ce = (-logp * inside).sum(-1) / inside.sum(-1).clamp(min=1)
        total = total + ce * (lvl < levels).to(ce)
    has = n > 0
    return (total / levels.clamp(min=1).to(total))[has].mean() if bool(has.any()) else logp.sum() * 0.0


def t3d_loss(lp_real, lp_real_ref, lp_fake, lp_fake_ref, valid, rank, beta=0.1, alpha=0.5,
             lambda_path=0.2, path_k=4, path_block=None, positions=None, path_valid=None) -> dict:
    """T3D: DDO on per-sample mean log p over the [B, K] targets (real = the
    trajectory's tokens, fake = the reference's argmax; rows without a target
    left out) plus lambda_path * path CE over ``path_valid`` (default ``valid``)."""
    n = valid.sum(-1).clamp(min=1)
    mean = lambda x: (x * valid).sum(-1) / n  # noqa: E731
    terms = (mean(lp_real), mean(lp_real_ref), mean(lp_fake), mean(lp_fake_ref))
    has = valid.any(-1)
    if not bool(has.all()):
        terms = tuple(t[has] for t in terms)
    ddo = ddo_loss(*terms, beta, alpha) if terms[0].numel() else lp_real.sum() * 0.0
    pv = valid if path_valid is None else path_valid
    path = (path_consistency_loss(lp_real, rank, pv, path_k, path_block, positions) if bool(pv.any())
            else lp_real.sum() * 0.0)
    return {"loss": ddo + lambda_path * path, "ddo": ddo.detach(), "path": path.detach(),
            "ce": _ce(lp_real, valid).detach()}
