"""The five training objectives, as small functions over tensors.

Two layers:

* **views** choose, from a batch and a ``torch.Generator``, which response
  tokens the model sees (``known``) and which it is scored on (``targets``):
  :func:`sft_view`, :func:`tabom_view`, :func:`dinfer_view`, :func:`t3d_view`.
* **losses** are pure functions of per-target log-probabilities / entropies
  (computed in fp32 only at the target positions, :func:`token_stats`) and
  of the batch: :func:`sft_loss`, :func:`dinfer_loss`, :func:`tabom_loss`
  (:func:`ranking_loss`), :func:`t3d_loss` (:func:`ddo_loss`,
  :func:`path_consistency_loss`).

Shapes: ``B`` rows, ``G`` response tokens per row (the canvas), ``K``
packed target slots per row; ``valid [B, K]`` marks real slots. ``order [B,
G]`` is the decoding rank of each token (:func:`tabom.trajectories.decode_order`),
``steps [B, G]`` the step map.

Normalisation (written down once, here):

* ``sft`` (SFT-GT, SFT-SD): LLaDA's SFT form. t ~ U(0, 1), mask probability
  p = (1 - eps) t + eps (eps = 1e-3), each response token masked independently
  (prompt never); per row, sum over masked tokens of CE / p, divided by that
  row's response length (EOS padding included); mean over rows.
* ``dinfer``: uniform NLL, mean over all target tokens of the batch.
* ``tabom``: reconstruction = per row mean over the window N of -log p (times
  |N| / w under ``window_truncated: weight``, below), mean over rows;
  ranking = per row mean over its strict pairs of max(0, m + H_i - H_j),
  mean over rows that have at least one pair (0 if no row has one); total =
  recon + lambda * rank.
* ``t3d``: DDO with per-sample mean log p over the masked tokens (as T3D),
  mean over rows that have a target; path term = mean over decode-order
  levels of the mean CE of the tokens decoded by that level (levels per
  decoder block with ``path_block``, below), mean over rows; total = DDO +
  lambda_path * path.
* The reported ``ce`` of every method is the unweighted mean CE over all of
  its target tokens.

Padding and windows of the trajectory objectives
------------------------------------------------

A trajectory's canvas holds the answer, its first stop token (EOS or
end-of-turn) and EOS padding up to the generation length. The *content
length* of a row (``stop_lengths``) counts the positions up to and including
that first stop token (the whole canvas when there is none); every position
after it is **padding**, whatever its id. Each option below defaults to the
value named first; the value that reproduces the behaviour before the
options existed is named "legacy".

TABOM (:func:`tabom_view`, :func:`tabom_loss`):

* ``pad_keep`` (default 2; legacy ``None`` = every position): the window N and
  the ranking pairs use only the **eligible** positions, those up to and
  including the first stop token plus at most ``pad_keep`` padding positions
  (:func:`eligible_mask`). The paper is silent on padding; its own TDS
  (Eqs. 10-11) leaves out the positions after the first EOS, and 2 is T3D's
  ``post_num`` (``train/prepare.py::collect_training_data``: at most 2 pad
  tokens are trained per sample). The input state x_s stays the true
  trajectory state: every token decoded before s is unmasked, padding
  included, so the input distribution is the model's own; N = the next w
  *eligible* tokens in decoding order; every other still-masked token
  (eligible or not) stays masked and carries no loss, so no pair and no
  reconstruction term involves an ineligible token.
* segment start s: states on the trajectory that still have at least one
  eligible masked token. Several states can precede the same N (they differ
  only by ineligible tokens decoded in between, e.g. LLaDA decodes the EOS
  tail first); each distinct N is drawn with equal probability and its state
  is the *latest* one, i.e. the state in which the first token of N was
  unmasked, so H(i | x_s) is exact for that token (Eq. 7 wants
  H(i | x_{t_i})). Drawing uniformly over states instead would give a window
  that follows a long run of padding that run's length in weight. With every
  position eligible this is the paper's "s uniform over the steps"
  (:func:`tabom_starts`).
* ``window`` / ``window_frac``: w absolute, or w = max(1, round(window_frac *
  canvas length)) rounded half up (the paper: w = 32 on a 256-token canvas
  = 0.125; Table 9 sweeps the absolute w). Neither set: w = 32.
* ``window_truncated`` (default ``weight``; legacy ``keep``) for the windows
  that reach the end of the eligible tokens with fewer than w of them (the
  paper: "fewer at the end", nothing on weighting):

  - ``keep``: keep them, each row's reconstruction is its mean over N;
  - ``full``: only starts whose window holds min(w, #eligible) tokens (a
    trajectory with fewer than w eligible tokens uses all of them);
  - ``weight``: keep every start, weight each row's reconstruction by |N|/w.

  With one token per step, m eligible tokens and uniform starts, the
  expected reconstruction weight of the token of eligible rank r is
  ``keep``: min(r+1, w)/(w m) plus, for the last w tokens, the harmonic tail
  (the last token gets H_w/m, 3.4x a middle token at w = 16); ``full``: a
  ramp at *both* ends (first and last token 1/w of a middle one);
  ``weight``: min(r+1, w)/(w m), flat except the unavoidable ramp over the
  first w - 1 tokens. ``weight`` is the default: it is the only one that
  gives every token past the first w - 1 the same weight.
  ``window_truncated`` has no effect with ``window_mode: global``.
* the ranking term is unchanged: per-row mean over the strict pairs of N.

T3D (:func:`t3d_view`, :func:`path_consistency_loss`), following
Tyrion58/T3D ``train/prepare.py::collect_training_data`` and
``train/self_ddo_sdar_full.py::compute_path_loss_from_step_map``:

* ``t3d_mask_from`` (default ``first``; legacy ``last``): T3D's "trace"
  strategy masks, in each block, the ``int(r * n_block)`` tokens decoded
  *earliest* (``sorted_valid_indices[:num_to_mask_in_block]`` over the
  step map in ascending order); ``last`` masks the latest-decoded tokens
  instead, which with ``path_block: null`` is a state on the trajectory
  (ceil(r * n) over the whole canvas, at least 1).
* ``path_block`` (default 8 = T3D's ``block_size``; legacy ``None`` = one
  block over the canvas): T3D uses one block size for both the trace masking
  and the path levels, and so does this: the masking above is done per block
  of canvas positions [0, b), [b, 2b), ... (``int(r * n_block)`` tokens, a
  row left with no masked token gets its single first/last-decoded one) and
  the path term forms ceil(b / path_k) levels per block: level l of a block
  = its first (l + 1) path_k targets in decoding order (all of them when the
  block has fewer). As T3D, level l pools the tokens of level l of *every*
  block, the path term is the mean CE of each level averaged over
  levels (T3D pools over its batch, whose per-device size is 1: here each
  row is pooled alone, then rows are averaged). Block 8, path_k 4: 2 levels,
  the first-decoded half of a block weighs 3x the second half (the whole
  canvas as one block: 12 levels of 4 on 48 tokens, the first token 37x the
  last). Deviation: T3D also scores the visible positions that fall in a
  level; here only masked targets are scored (the model's logits are
  gathered only there).
* ``pad_keep`` (default 2 = T3D's ``post_num``; legacy ``None``): as T3D, the
  masked padding positions beyond the first ``pad_keep`` masked ones (in
  position order) stay in the sequence, masked, and carry no loss (T3D
  clears them from ``p_mask``, it does not truncate them); the DDO terms
  average over the remaining targets and rows left with no target are left
  out of the DDO mean (T3D drops them). The path term drops every padding
  position (T3D's path loss skips all pad tokens); with ``pad_keep: null``
  nothing is treated as padding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


# --------------------------------------------------------------------------
# per-token statistics
# --------------------------------------------------------------------------

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
    """(log p(target) [B, K], entropy [B, K]) in fp32 from logits [B, K, V],
    with one log-softmax, computed only on the K gathered rows."""
    logp_all = log_probs(logits, temperature)
    return gather_logprobs(logp_all, targets), entropy_of(logp_all)


def pack(mask: torch.Tensor, min_k: int = 1):
    """Indices of the True entries of each row of ``mask`` [B, G], packed
    left into [B, K] (K = largest count, at least ``min_k``) with ``valid``."""
    B, G = mask.shape
    counts = mask.sum(-1)
    K = min(max(int(counts.max()) if B else 0, min_k), G)
    # stable sort puts True (key 0) first, in position order
    key = (~mask).long() * (G + 1) + torch.arange(G, device=mask.device)
    idx = key.argsort(dim=-1)[:, :K]
    valid = torch.arange(K, device=mask.device).unsqueeze(0) < counts.unsqueeze(1)
    idx = torch.where(valid, idx, torch.zeros_like(idx))
    return idx, valid


# --------------------------------------------------------------------------
# views
# --------------------------------------------------------------------------

def sft_view(resp_mask: torch.Tensor, generator: torch.Generator | None = None, eps: float = 1e-3):
    """Uniform masking: t ~ U(0,1), p = (1-eps) t + eps per row; each real
    response token masked with probability p. Returns (known, targets, p)."""
    B, G = resp_mask.shape
    t = torch.rand(B, generator=generator)
    p = (1 - eps) * t + eps
    masked = (torch.rand(B, G, generator=generator) < p.unsqueeze(1)) & resp_mask.cpu()
    return ~masked & resp_mask.cpu(), masked, p


def _boundaries(order_row: torch.Tensor, steps_row: torch.Tensor, n: int) -> list[int]:
    """Cut points c (0 <= c < n) at which a trajectory state exists: the first
    c tokens in decoding order are unmasked and the rest are not."""
    by_rank = torch.empty(n, dtype=torch.long)
    by_rank[order_row[:n]] = steps_row[:n]
    cuts = [0] + [c for c in range(1, n) if by_rank[c] != by_rank[c - 1]]
    return cuts


def _trajectory_rows(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor):
    """Per row: (b, n, decode rank of its n tokens, cut points of its states)."""
    for b in range(order.shape[0]):
        n = int(lengths[b])
        yield b, n, order[b, :n], _boundaries(order[b], steps[b], n)


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
    """The segment starts of one trajectory, as cut points c (the first c
    tokens in decoding order are unmasked): one per distinct window N -- the
    latest state before N's first token -- among the states that still have
    an eligible masked token; ``truncated="full"`` keeps only the starts whose
    window holds min(w, #eligible) tokens. ``rank``/``steps``/``eligible``:
    the row's first ``n`` entries."""
    cuts = _boundaries(rank, steps, n)
    if eligible is None:
        starts = cuts  # every position eligible: one window per state
        m = n
        before = {c: c for c in cuts}
    else:
        elig_ranks = torch.sort(rank[:n][eligible[:n]]).values
        m = int(elig_ranks.numel())
        # eligible tokens decoded before each cut
        counts = torch.searchsorted(elig_ranks, torch.tensor(cuts, dtype=elig_ranks.dtype))
        before = dict(zip(cuts, counts.tolist()))
        latest: dict[int, int] = {}
        for c in cuts:
            if before[c] < m:
                latest[before[c]] = c  # cuts ascend: the last one wins
        starts = sorted(latest.values())
    if window_mode == "local" and truncated == "full":
        need = min(window, m)
        starts = [c for c in starts if m - before[c] >= need]
    return starts


def tabom_segment(rank: torch.Tensor, n: int, eligible: torch.Tensor | None, start: int,
                  window: int | None):
    """(known [n], targets [n]) of the segment at cut ``start``: the first
    ``start`` tokens in decoding order are known; N = the next ``window``
    eligible tokens (all remaining eligible ones for ``window=None``)."""
    rank = rank[:n]
    known = rank < start
    cand = ~known if eligible is None else (~known & eligible[:n])
    if window is not None:
        # keep the ``window`` candidates of lowest rank
        big = torch.where(cand, rank, torch.full_like(rank, n + 1))
        cut = torch.sort(big).values[min(window, n) - 1] if n else 0
        cand = cand & (rank <= cut)
    return known, cand


def tabom_view(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor, window,
               window_mode: str = "local", generator: torch.Generator | None = None,
               eligible: torch.Tensor | None = None, truncated: str = "keep"):
    """TABOM's local segment. Per row: a start s drawn uniformly over
    :func:`tabom_starts`; state x_s = tokens decoded before step s unmasked
    (padding included); N = the next ``window`` eligible tokens in decoding
    order (all eligible tokens of M_s for ``window_mode="global"``); every
    other masked token stays masked and carries no loss. ``window``: an int or
    a [B] tensor (one w per row); ``eligible`` [B, G] or ``None`` (all).
    Returns (known [B, G], targets [B, G])."""
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
    for b, n, rank, cuts in _trajectory_rows(order, steps, lengths):
        if eligible is None and truncated != "full":
            c = _draw(cuts, generator)  # today's path, kept verbatim
            end = n if window_mode == "global" else min(c + wins[b], n)
            known[b, :n] = rank < c
            targets[b, :n] = (rank >= c) & (rank < end)
            continue
        elig = None if eligible is None else eligible[b, :n].cpu()
        starts = tabom_starts(rank, steps[b, :n], n, elig, wins[b], window_mode, truncated)
        if not starts:
            continue  # no eligible token at all: the row has no target
        c = _draw(starts, generator)
        k, t = tabom_segment(rank, n, elig, c, None if window_mode == "global" else wins[b])
        known[b, :n], targets[b, :n] = k, t
    return known, targets


def dinfer_view(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor,
                generator: torch.Generator | None = None):
    """dInfer's compressed transition: two trajectory states s (earlier, more
    masked) and s' (later); input x_s; targets = tokens unmasked between them."""
    known = torch.zeros(order.shape, dtype=torch.bool)
    targets = torch.zeros(order.shape, dtype=torch.bool)
    for b, n, rank, cuts in _trajectory_rows(order, steps, lengths):
        i = int(torch.randint(len(cuts), (1,), generator=generator))
        c1 = cuts[i]
        c2 = _draw(cuts[i + 1:] + [n], generator)
        known[b, :n] = rank < c1
        targets[b, :n] = (rank >= c1) & (rank < c2)
    return known, targets


def t3d_view(order: torch.Tensor, lengths: torch.Tensor, ratios=(1.0, 0.75, 0.5, 0.25),
             power: float = 8.0, generator: torch.Generator | None = None, mask_from: str = "last",
             block: int | None = None, stop_lengths: torch.Tensor | None = None,
             pad_keep: int | None = None):
    """T3D's "trace" masking: a mask ratio r drawn from ``ratios`` with
    probability proportional to r**power, then

    * ``block=None``: ceil(r * n) tokens (at least 1) over the whole canvas;
    * ``block=b``: in each block of b canvas positions, int(r * n_block)
      tokens (as T3D; a row left with none gets one);

    the earliest-decoded (``mask_from="first"``, T3D) or latest-decoded
    (``"last"``: with ``block=None`` a state on the trajectory) ones.
    ``pad_keep``: of the masked padding positions (after the first stop
    token, ``stop_lengths``), only the first ``pad_keep`` in position order
    are targets; the others stay masked with no loss (T3D's ``post_num``).
    Returns (known, targets)."""
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


# --------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------

def _masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    n = valid.sum()
    return (x * valid).sum() / n.clamp(min=1)


def sft_loss(logp: torch.Tensor, valid: torch.Tensor, p_mask: torch.Tensor,
             lengths: torch.Tensor) -> dict:
    """NELBO: mean over rows of (sum over masked tokens of -log p / p_mask) / length."""
    nll = -logp * valid
    per_row = nll.sum(-1) / p_mask.to(nll) / lengths.to(nll).clamp(min=1)
    return {"loss": per_row.mean(), "ce": _masked_mean(-logp, valid).detach()}


def dinfer_loss(logp: torch.Tensor, valid: torch.Tensor) -> dict:
    """Uniform NLL of the tokens unmasked between the two states."""
    loss = _masked_mean(-logp, valid)
    return {"loss": loss, "ce": loss.detach()}


def ranking_pairs(steps: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """[B, K, K] bool: (i, j) is a pair when i was decoded strictly before j
    (steps_i < steps_j) and both are valid; tied steps form no pair."""
    v = valid.unsqueeze(-1) & valid.unsqueeze(-2)
    return (steps.unsqueeze(-1) < steps.unsqueeze(-2)) & v


PAIR_TIE_TOL = 1e-2  # nats: entropy gaps below this count as ties in the pair accuracy


def ranking_loss(entropy: torch.Tensor, steps: torch.Tensor, valid: torch.Tensor,
                 margin: float, tie_tol: float = PAIR_TIE_TOL) -> dict:
    """Pairwise hinge max(0, m + H_i - H_j) over strict pairs (i before j).

    Returns the loss (per-row pair mean, averaged over rows with pairs), the
    pair accuracy and the pair count. Pair accuracy = fraction of pairs with
    H_i < H_j among the pairs whose entropies differ by at least ``tie_tol``
    (two near-deterministic tokens, both at ~1e-4 nats, are a numerical tie
    and count neither way; NaN when no pair is decided).
    """
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
    """L = L_recon + lambda * L_rank on one local window per row.
    ``recon_weight`` [B]: a factor on each row's reconstruction mean
    (``window_truncated: weight`` passes |N| / w)."""
    nll = -logp * valid
    per_row = nll.sum(-1) / valid.sum(-1).clamp(min=1)
    if recon_weight is not None:
        per_row = per_row * recon_weight.to(per_row)
    recon = per_row[valid.any(-1)].mean()
    rank = ranking_loss(entropy, steps, valid, margin, tie_tol)
    loss = recon + lam * rank["loss"] if lam else recon
    return {"loss": loss, "recon": recon.detach(), "rank": rank["loss"].detach(),
            "ce": _masked_mean(-logp, valid).detach(), "pair_acc": rank["pair_acc"],
            "pairs": rank["pairs"]}


def ddo_loss(lp_real: torch.Tensor, lp_real_ref: torch.Tensor, lp_fake: torch.Tensor,
             lp_fake_ref: torch.Tensor, beta: float = 0.1, alpha: float = 0.5) -> torch.Tensor:
    """Direct discriminative optimisation with the implicit discriminator
    sigma(beta (log p_theta - log p_ref)): -log sigma(beta d_real) -
    alpha log(1 - sigma(beta d_fake)), mean over rows (inputs: [B])."""
    real = F.softplus(-beta * (lp_real - lp_real_ref))
    fake = F.softplus(beta * (lp_fake - lp_fake_ref))
    return (real + alpha * fake).mean()


def path_consistency_loss(logp: torch.Tensor, rank: torch.Tensor, valid: torch.Tensor,
                          k: int = 4, block: int | None = None,
                          positions: torch.Tensor | None = None) -> torch.Tensor:
    """T3D's path term. ``block=None``: levels of ``k`` tokens in decoding
    order over the whole row; level l holds the tokens decoded by level l
    (the first (l+1) k targets); mean CE per level, averaged over levels and
    rows. ``block=b`` (T3D): the targets are grouped by canvas block
    (``positions`` // b); level l (l < ceil(b / k)) pools, over every block,
    that block's first (l+1) k targets in decoding order; mean CE of each
    level, averaged over levels, then over rows with a target.
    Earlier tokens weigh more."""
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
    """T3D: DDO on per-sample mean log p (real = trajectory tokens, fake = the
    reference's argmax) plus lambda_path * path-consistency CE. Inputs are
    [B, K] per-token log-probs over the masked targets. Rows without a target
    are left out of the DDO mean (T3D drops them); ``path_valid`` (default
    ``valid``): the targets the path term scores (T3D: no padding)."""
    n = valid.sum(-1).clamp(min=1)
    mean = lambda x: (x * valid).sum(-1) / n  # noqa: E731
    terms = (mean(lp_real), mean(lp_real_ref), mean(lp_fake), mean(lp_fake_ref))
    has = valid.any(-1)
    if not bool(has.all()):
        terms = tuple(t[has] for t in terms) if bool(has.any()) else tuple(t[:0] for t in terms)
    ddo = ddo_loss(*terms, beta, alpha) if terms[0].numel() else lp_real.sum() * 0.0
    pv = valid if path_valid is None else path_valid
    if bool(pv.any()):
        path = path_consistency_loss(lp_real, rank, pv, path_k, path_block, positions)
    else:
        path = lp_real.sum() * 0.0
    return {"loss": ddo + lambda_path * path, "ddo": ddo.detach(), "path": path.detach(),
            "ce": _masked_mean(-lp_real, valid).detach()}
