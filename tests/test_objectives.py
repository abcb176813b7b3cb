"""The training losses on tensors small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tabom.objectives import (ddo_loss, dinfer_loss, dinfer_view, pack, path_consistency_loss,
                              ranking_loss, ranking_pairs, sft_loss, sft_view, t3d_loss, t3d_view,
                              tabom_loss, tabom_view, token_stats)
from tabom.trajectories import decode_order

LN2, LN3 = math.log(2), math.log(3)


def test_token_stats_logp_and_entropy_by_hand():
    logits = torch.tensor([[[0.0, LN3]]])  # p = (1/4, 3/4)
    logp, ent = token_stats(logits, torch.tensor([[1]]))
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert logp.dtype == torch.float32
    # bf16 logits are upcast before the softmax
    logp16, _ = token_stats(logits.bfloat16(), torch.tensor([[1]]))
    assert logp16.dtype == torch.float32


def test_pack_left_aligns_true_entries():
    mask = torch.tensor([[False, True, False, True], [False, False, False, False]])
    idx, valid = pack(mask)
    assert idx.tolist() == [[1, 3], [0, 0]]
    assert valid.tolist() == [[True, True], [False, False]]


def test_sft_loss_weights_by_inverse_mask_rate_and_row_length():
    logp = torch.tensor([[-LN2, -2 * LN2, -9.0], [-LN2, -9.0, -9.0]])
    valid = torch.tensor([[True, True, False], [True, False, False]])
    p = torch.tensor([0.5, 0.25])
    lengths = torch.tensor([4, 2])
    out = sft_loss(logp, valid, p, lengths)
    row0 = (LN2 + 2 * LN2) / 0.5 / 4
    row1 = LN2 / 0.25 / 2
    assert out["loss"].item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    assert out["ce"].item() == pytest.approx((LN2 + 2 * LN2 + LN2) / 3, rel=1e-6)


def test_sft_view_masks_only_response_tokens_at_rate_p():
    resp_mask = torch.ones(2000, 66, dtype=torch.bool)
    resp_mask[:, 64:] = False
    known, masked, p = sft_view(resp_mask, torch.Generator().manual_seed(0), eps=1e-3)
    assert not masked[:, 64:].any() and not known[:, 64:].any()
    assert ((known ^ masked) == resp_mask).all()
    assert p.min() >= 1e-3 and p.max() <= 1.0
    # the masked fraction tracks p
    frac = masked[:, :64].float().mean(-1)
    assert torch.corrcoef(torch.stack([frac, p]))[0, 1] > 0.95


def test_dinfer_loss_is_uniform_mean():
    logp = torch.tensor([[-1.0, -3.0], [-2.0, -7.0]])
    valid = torch.tensor([[True, True], [True, False]])
    assert dinfer_loss(logp, valid)["loss"].item() == pytest.approx(2.0)


def test_ranking_pairs_strict_order_ties_excluded():
    steps = torch.tensor([[0, 1, 1, 2]])
    valid = torch.tensor([[True, True, True, False]])
    pairs = ranking_pairs(steps, valid)[0]
    assert pairs.nonzero().tolist() == [[0, 1], [0, 2]]  # (1,2) tied; 3 invalid


def test_ranking_loss_margin_and_ties_by_hand():
    ent = torch.tensor([[1.0, 0.5, 2.0]])
    steps = torch.tensor([[0, 1, 1]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    out = ranking_loss(ent, steps, valid, margin=0.2)
    # pairs (0,1): relu(0.2 + 1.0 - 0.5) = 0.7 ; (0,2): relu(0.2 + 1.0 - 2.0) = 0 ; (1,2) tied
    assert out["loss"].item() == pytest.approx(0.35)
    assert out["pairs"] == 2
    assert out["pair_acc"].item() == pytest.approx(0.5)


def test_ranking_loss_margin_edge_is_zero():
    ent = torch.tensor([[0.3, 0.5]])  # H_i - H_j = -0.2 = -m exactly
    out = ranking_loss(ent, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), margin=0.2)
    assert out["loss"].item() == pytest.approx(0.0, abs=1e-7)
    out = ranking_loss(ent, torch.tensor([[0, 1]]), torch.ones(1, 2, dtype=torch.bool), margin=0.3)
    assert out["loss"].item() == pytest.approx(0.1, abs=1e-6)


def test_ranking_loss_averages_per_row_and_skips_rows_without_pairs():
    ent = torch.tensor([[2.0, 1.0, 0.0], [5.0, 0.0, 0.0]])
    steps = torch.tensor([[0, 1, 2], [3, 3, 3]])  # row 1: all tied -> no pair
    valid = torch.ones(2, 3, dtype=torch.bool)
    out = ranking_loss(ent, steps, valid, margin=0.0)
    # row 0 pairs: (0,1) 1.0, (0,2) 2.0, (1,2) 1.0 -> mean 4/3
    assert out["loss"].item() == pytest.approx(4 / 3)
    assert out["pairs"] == 3
    assert out["pair_acc"].item() == 0.0


def test_pair_accuracy_treats_numerical_ties_as_undecided():
    ent = torch.tensor([[1e-4, 2e-4, 0.5]])
    out = ranking_loss(ent, torch.tensor([[0, 1, 2]]), torch.ones(1, 3, dtype=torch.bool), margin=0.1)
    # (0,1) differ by 1e-4 < tol: undecided; (0,2), (1,2) correct
    assert out["pair_acc"].item() == 1.0


def test_tabom_loss_combines_recon_and_weighted_rank():
    logp = torch.tensor([[-1.0, -2.0, -6.0], [-4.0, -9.0, -9.0]])
    ent = torch.tensor([[1.0, 0.5, 2.0], [0.0, 0.0, 0.0]])
    steps = torch.tensor([[0, 1, 1], [0, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    recon = ((1 + 2 + 6) / 3 + 4) / 2
    out = tabom_loss(logp, ent, steps, valid, lam=2.0, margin=0.2)
    assert out["recon"].item() == pytest.approx(recon)
    assert out["rank"].item() == pytest.approx(0.35)
    assert out["loss"].item() == pytest.approx(recon + 2 * 0.35)
    assert tabom_loss(logp, ent, steps, valid, lam=0.0, margin=0.2)["loss"].item() == pytest.approx(recon)
    assert out["ce"].item() == pytest.approx((1 + 2 + 6 + 4) / 4)


def test_ranking_gradient_pushes_earlier_entropy_below_later():
    """Gradient descent on the ranking term alone turns a wrong order right."""
    torch.manual_seed(0)
    # token 0 (decoded first) starts flat (high entropy), token 1 peaked (low entropy)
    logits = torch.tensor([[[0.0, 0.1, 0.0, 0.1], [4.0, 0.0, 0.0, 0.0]]], requires_grad=True)
    steps = torch.tensor([[0, 1]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    _, ent = token_stats(logits, torch.zeros(1, 2, dtype=torch.long))
    assert ent[0, 0] > ent[0, 1]
    loss = ranking_loss(ent, steps, valid, margin=0.2)["loss"]
    (g_h,) = torch.autograd.grad(loss, ent, retain_graph=True)
    assert g_h[0, 0] > 0 and g_h[0, 1] < 0  # lower H_early, raise H_late
    opt = torch.optim.SGD([logits], lr=1.0)
    for _ in range(200):
        _, ent = token_stats(logits, torch.zeros(1, 2, dtype=torch.long))
        loss = ranking_loss(ent, steps, valid, margin=0.2)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, ent = token_stats(logits, torch.zeros(1, 2, dtype=torch.long))
    assert ent[0, 0] + 0.2 <= ent[0, 1] + 1e-3


def test_decode_order_breaks_step_ties_by_entropy():
    order = decode_order([1, 0, 1, 0], [0.5, 0.9, 0.1, 0.2])
    # step 0: pos 3 (H .2) then pos 1 (H .9); step 1: pos 2 (H .1) then pos 0
    assert order.tolist() == [3, 1, 2, 0]
    assert decode_order([0, 0, 0]).tolist() == [0, 1, 2]  # no entropy: by position


def _one_per_step(n):
    order = torch.arange(n).unsqueeze(0)
    return order, order.clone(), torch.tensor([n])


def test_tabom_view_local_window_and_edges():
    order, steps, lengths = _one_per_step(10)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        known, targets = tabom_view(order, steps, lengths, window=4, generator=g)
        c = int(known.sum())
        seen.add(c)
        assert known[0, :c].all()  # the first c decoded tokens are visible
        assert targets[0].nonzero().squeeze(-1).tolist() == list(range(c, min(c + 4, 10)))
    assert seen == set(range(10))  # every state on the trajectory is a segment start


def test_tabom_view_respects_tied_steps_and_global_mode():
    order = torch.tensor([[0, 1, 2, 3, 4]])
    steps = torch.tensor([[0, 0, 1, 1, 2]])
    g = torch.Generator().manual_seed(0)
    starts = set()
    for _ in range(100):
        known, targets = tabom_view(order, steps, torch.tensor([5]), window=2,
                                    window_mode="global", generator=g)
        c = int(known.sum())
        starts.add(c)
        assert targets[0].tolist() == [i >= c for i in range(5)]  # all of M_s
    assert starts == {0, 2, 4}  # only real states (step boundaries)


def test_dinfer_view_targets_between_two_states():
    order, steps, lengths = _one_per_step(6)
    g = torch.Generator().manual_seed(1)
    for _ in range(100):
        known, targets = dinfer_view(order, steps, lengths, generator=g)
        c1 = int(known.sum())
        t = targets[0].nonzero().squeeze(-1).tolist()
        assert t and t[0] == c1 and t == list(range(c1, c1 + len(t)))


def test_t3d_view_masks_latest_tokens_with_power_weighted_ratio():
    order = torch.tensor([[3, 0, 2, 1]] * 4000)
    g = torch.Generator().manual_seed(0)
    known, targets = t3d_view(order, torch.tensor([4] * 4000), ratios=(1.0, 0.5), power=2.0, generator=g)
    counts = targets.sum(-1)
    assert set(counts.tolist()) == {4, 2}
    assert (counts == 4).float().mean().item() == pytest.approx(1 / 1.25, abs=0.03)  # 1 : 0.25
    half = targets[counts == 2][0]
    assert half.tolist() == [True, False, True, False]  # ranks 3 and 2: the latest decoded


def test_ddo_loss_by_hand():
    z = torch.zeros(1)
    assert ddo_loss(z, z, z, z, beta=0.1, alpha=0.5).item() == pytest.approx(1.5 * LN2)
    real = ddo_loss(torch.tensor([LN3]), z, z - 100, z, beta=1.0, alpha=0.0)
    assert real.item() == pytest.approx(math.log(4 / 3), rel=1e-6)


def test_path_consistency_weights_earlier_tokens_more():
    logp = torch.tensor([[-1.0, -2.0, -4.0]])
    rank = torch.tensor([[2, 0, 1]])  # decoded: token 1, then 2, then 0
    valid = torch.ones(1, 3, dtype=torch.bool)
    got = path_consistency_loss(logp, rank, valid, k=1)
    a, b, c = 1.0, 2.0, 4.0
    assert got.item() == pytest.approx((b + (b + c) / 2 + (a + b + c) / 3) / 3)
    out = t3d_loss(logp, logp, logp, logp, valid, rank, beta=0.1, alpha=0.5, lambda_path=0.2, path_k=1)
    assert out["loss"].item() == pytest.approx(1.5 * LN2 + 0.2 * got.item(), rel=1e-6)
