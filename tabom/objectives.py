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
* ``tabom``: reconstruction = per row mean over the window N of -log p, mean
  over rows; ranking = per row mean over its strict pairs of
  max(0, m + H_i - H_j), mean over rows that have at least one pair (0 if no
  row has one); total = recon + lambda * rank.
* ``t3d``: DDO with per-sample mean log p over the masked tokens (as T3D),
  mean over rows; path term = mean over decode-order levels of the mean CE
  of the tokens decoded by that level, mean over rows; total = DDO +
  lambda_path * path.
* The reported ``ce`` of every method is the unweighted mean CE over all of
  its target tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

METHODS = ("sft", "dinfer", "t3d", "tabom")


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


def tabom_view(order: torch.Tensor, steps: torch.Tensor, lengths: torch.Tensor, window: int,
               window_mode: str = "local", generator: torch.Generator | None = None):
    """TABOM's local segment. Per row: a step s drawn uniformly over the
    trajectory's steps; state x_s = tokens decoded before step s unmasked;
    N = the next ``window`` tokens in decoding order (all of M_s for
    ``window_mode="global"``); tokens after N stay masked and carry no loss.
    Returns (known [B, G], targets [B, G])."""
    if window_mode not in ("local", "global"):
        raise ValueError(f"window_mode={window_mode!r} must be 'local' or 'global'")
    if window_mode == "local" and window < 1:
        raise ValueError(f"window={window} must be >= 1")
    known = torch.zeros(order.shape, dtype=torch.bool)
    targets = torch.zeros(order.shape, dtype=torch.bool)
    for b, n, rank, cuts in _trajectory_rows(order, steps, lengths):
        c = _draw(cuts, generator)
        end = n if window_mode == "global" else min(c + window, n)
        known[b, :n] = rank < c
        targets[b, :n] = (rank >= c) & (rank < end)
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
             power: float = 8.0, generator: torch.Generator | None = None):
    """T3D's "trace" masking: a mask ratio r drawn from ``ratios`` with
    probability proportional to r**power; the last ceil(r * n) tokens in
    decoding order are masked (a state on the trajectory)."""
    B, G = order.shape
    w = torch.tensor([float(r) ** power for r in ratios])
    pick = torch.multinomial(w / w.sum(), B, replacement=True, generator=generator)
    known = torch.zeros(B, G, dtype=torch.bool)
    targets = torch.zeros(B, G, dtype=torch.bool)
    for b in range(B):
        n = int(lengths[b])
        n_mask = max(1, math.ceil(float(ratios[int(pick[b])]) * n))
        rank = order[b, :n]
        targets[b, :n] = rank >= n - n_mask
        known[b, :n] = ~targets[b, :n]
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
               tie_tol: float = PAIR_TIE_TOL) -> dict:
    """L = L_recon + lambda * L_rank on one local window per row."""
    nll = -logp * valid
    recon = (nll.sum(-1) / valid.sum(-1).clamp(min=1))[valid.any(-1)].mean()
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
                          k: int = 4) -> torch.Tensor:
    """T3D's path term: levels of ``k`` tokens in decoding order; level l holds
    the tokens decoded by level l (the first (l+1) k targets); mean CE per
    level, averaged over levels and rows. Earlier tokens weigh more."""
    if k < 1:
        raise ValueError(f"path_k={k} must be >= 1")
    # position of each target in decoding order among this row's targets
    big = torch.where(valid, rank, torch.full_like(rank, torch.iinfo(torch.long).max))
    local = big.argsort(-1).argsort(-1)  # 0 = decoded first
    n = valid.sum(-1)
    levels = (n + k - 1) // k
    L = int(levels.max()) if levels.numel() else 0
    total = logp.new_zeros(logp.shape[0])
    for lvl in range(L):
        inside = valid & (local < (lvl + 1) * k)
        ce = (-logp * inside).sum(-1) / inside.sum(-1).clamp(min=1)
        total = total + ce * (lvl < levels).to(ce)
    return (total / levels.clamp(min=1).to(total))[n > 0].mean()


def t3d_loss(lp_real, lp_real_ref, lp_fake, lp_fake_ref, valid, rank, beta=0.1, alpha=0.5,
             lambda_path=0.2, path_k=4) -> dict:
    """T3D: DDO on per-sample mean log p (real = trajectory tokens, fake = the
    reference's argmax) plus lambda_path * path-consistency CE. Inputs are
    [B, K] per-token log-probs over the masked targets."""
    n = valid.sum(-1).clamp(min=1)
    mean = lambda x: (x * valid).sum(-1) / n  # noqa: E731
    ddo = ddo_loss(mean(lp_real), mean(lp_real_ref), mean(lp_fake), mean(lp_fake_ref), beta, alpha)
    path = path_consistency_loss(lp_real, rank, valid, path_k)
    return {"loss": ddo + lambda_path * path, "ddo": ddo.detach(), "path": path.detach(),
            "ce": _masked_mean(-lp_real, valid).detach()}
