"""The training losses on tensors small enough to check by hand."""

from __future__ import annotations

import math

import pytest
import torch

from tabom.objectives import (ddo_loss, dinfer_loss, dinfer_view, eligible_mask, pack,
                              path_consistency_loss, ranking_loss, ranking_pairs, sft_loss, sft_view,
                              t3d_loss, t3d_view, tabom_loss, tabom_segment, tabom_starts, tabom_view,
                              token_stats, window_from_frac)
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



# --------------------------------------------------------------------------
# padding and windows of the trajectory objectives
# --------------------------------------------------------------------------
# A 10-token canvas: answer at positions 0-4, the first EOS at 5, padding at
# 6-9 (stop length 6). One token per step, the EOS tail decoded first (as
# LLaDA does): decoding order by position below, rank = step.
STEPS10 = [5, 7, 6, 9, 8, 4, 0, 1, 2, 3]
#   rank:  pos6 0, pos7 1, pos8 2, pos9 3, pos5 4, pos0 5, pos2 6, pos1 7, pos4 8, pos3 9


def _traj10():
    order = decode_order(STEPS10).unsqueeze(0)
    assert order[0].tolist() == STEPS10  # one per step: rank = step
    return order, order.clone(), torch.tensor([10]), torch.tensor([6])


def _positions(mask_row) -> list[int]:
    return mask_row.nonzero().squeeze(-1).tolist()


def test_eligible_positions_with_pad_keep():
    _, _, lengths, stop = _traj10()
    assert _positions(eligible_mask(stop, lengths, 0)[0]) == [0, 1, 2, 3, 4, 5]  # through the EOS
    assert _positions(eligible_mask(stop, lengths, 2)[0]) == list(range(8))  # + 2 pads
    assert _positions(eligible_mask(stop, lengths, None)[0]) == list(range(10))
    assert _positions(eligible_mask(stop, lengths, 9)[0]) == list(range(10))  # capped at the canvas
    # a row without a stop token (stop length = its length) is all eligible
    assert eligible_mask(torch.tensor([4]), torch.tensor([4]), 0, G=6)[0].tolist() == [True] * 4 + [False] * 2


def test_stop_length_of_a_response():
    from tabom.train import stop_length

    assert stop_length([5, 6, 7, 9, 8, 8], {8, 9}) == 4  # the first of either stop id
    assert stop_length([5, 6, 7], {8, 9}) == 3


def test_tabom_starts_one_per_window_latest_state():
    order, steps, _, stop = _traj10()
    rank, st = order[0], steps[0]
    elig0 = eligible_mask(stop, torch.tensor([10]), 0)[0]
    # pad_keep 0: the eligible tokens have ranks 4..9; the states 0..4 all
    # precede the same window, the latest one (4) is its start
    assert tabom_starts(rank, st, 10, elig0, 3) == [4, 5, 6, 7, 8, 9]
    elig2 = eligible_mask(stop, torch.tensor([10]), 2)[0]  # + pos6 (rank 0), pos7 (rank 1)
    assert tabom_starts(rank, st, 10, elig2, 3) == [0, 1, 4, 5, 6, 7, 8, 9]
    assert tabom_starts(rank, st, 10, None, 3) == list(range(10))  # everything eligible: every state
    # full: only starts with min(w, #eligible) eligible tokens left
    assert tabom_starts(rank, st, 10, elig0, 4, truncated="full") == [4, 5, 6]
    assert tabom_starts(rank, st, 10, elig0, 8, truncated="full") == [4]  # 6 eligible < w: all of them
    assert tabom_starts(rank, st, 10, None, 4, truncated="full") == list(range(7))


def test_tabom_segment_targets_known_and_still_masked():
    order, _, _, stop = _traj10()
    rank = order[0]
    elig0 = eligible_mask(stop, torch.tensor([10]), 0)[0]
    known, tgt = tabom_segment(rank, 10, elig0, 4, 3)
    assert _positions(known) == [6, 7, 8, 9]  # the true state: the padding decoded before s is visible
    assert _positions(tgt) == [0, 2, 5]  # ranks 4, 5, 6
    assert _positions(~known & ~tgt) == [1, 3, 4]  # still masked, no loss
    known, tgt = tabom_segment(rank, 10, elig0, 7, 3)
    assert _positions(tgt) == [1, 3, 4] and _positions(~known & ~tgt) == []
    elig2 = eligible_mask(stop, torch.tensor([10]), 2)[0]
    known, tgt = tabom_segment(rank, 10, elig2, 1, 3)
    assert _positions(known) == [6]
    assert _positions(tgt) == [0, 5, 7]  # ranks 1 (pad 7), 4 (EOS), 5; pads 8, 9 are skipped
    assert _positions(~known & ~tgt) == [1, 2, 3, 4, 8, 9]
    known, tgt = tabom_segment(rank, 10, elig2, 1, None)  # global: all eligible masked tokens
    assert _positions(tgt) == [0, 1, 2, 3, 4, 5, 7]


@pytest.mark.parametrize("pad_keep", [0, 2])
def test_tabom_view_never_trains_ineligible_tokens(pad_keep):
    order, steps, lengths, stop = _traj10()
    elig = eligible_mask(stop, lengths, pad_keep)
    starts = tabom_starts(order[0], steps[0], 10, elig[0], 3)
    g = torch.Generator().manual_seed(0)
    seen = set()
    for _ in range(300):
        known, targets = tabom_view(order, steps, lengths, 3, generator=g, eligible=elig)
        c = int(known.sum())
        seen.add(c)
        assert c in starts  # s is a start that still has an eligible masked token
        assert known[0].tolist() == (order[0] < c).tolist()
        assert not (targets & ~elig).any()
        idx, valid = pack(targets)
        pairs = ranking_pairs(steps.gather(1, idx), valid)[0]
        for i, j in pairs.nonzero().tolist():  # every pair: two eligible tokens, i decoded first
            assert bool(elig[0, idx[0, i]]) and bool(elig[0, idx[0, j]])
            assert steps[0, idx[0, i]] < steps[0, idx[0, j]]
    assert seen == set(starts)
    assert max(seen) <= 9 and (pad_keep == 2 or min(seen) == 4)


def test_tabom_view_full_never_short_when_possible():
    order, steps, lengths, stop = _traj10()
    g = torch.Generator().manual_seed(1)
    for pad_keep, w, want in ((0, 4, 4), (2, 4, 4), (0, 8, 6), (None, 4, 4)):
        elig = None if pad_keep is None else eligible_mask(stop, lengths, pad_keep)
        for _ in range(60):
            _, targets = tabom_view(order, steps, lengths, w, generator=g, eligible=elig, truncated="full")
            assert int(targets.sum()) == want, (pad_keep, w)
    # tied steps: the full starts are the states with at least w tokens left
    order, steps = torch.tensor([[0, 1, 2, 3, 4]]), torch.tensor([[0, 0, 1, 1, 2]])
    assert tabom_starts(order[0], steps[0], 5, None, 2, truncated="full") == [0, 2]


def _expected_weights(n, w, truncated, elig=None):
    """Expected reconstruction weight per decode rank, enumerating the starts
    of a one-token-per-step trajectory (row loss = weight x mean over N)."""
    rank = torch.arange(n)
    starts = tabom_starts(rank, rank, n, elig, w, truncated=truncated)
    out = [0.0] * n
    for c in starts:
        _, tgt = tabom_segment(rank, n, elig, c, w)
        size = int(tgt.sum())
        row_w = size / w if truncated == "weight" else 1.0
        for r in _positions(tgt):
            out[r] += row_w / size / len(starts)
    return out


def test_truncated_window_modes_expected_weight_by_hand():
    # n = 6, w = 3: windows {0,1,2} {1,2,3} {2,3,4} {3,4,5} {4,5} {5}
    keep = _expected_weights(6, 3, "keep")
    assert keep == pytest.approx([x / 6 for x in (1 / 3, 2 / 3, 1, 1, 7 / 6, 11 / 6)])
    full = _expected_weights(6, 3, "full")  # only the 4 full windows
    assert full == pytest.approx([x / 4 for x in (1 / 3, 2 / 3, 1, 1, 2 / 3, 1 / 3)])
    weight = _expected_weights(6, 3, "weight")
    assert weight == pytest.approx([x / 6 for x in (1 / 3, 2 / 3, 1, 1, 1, 1)])
    # on a longer row, `weight` is the only one flat past the first w - 1 tokens
    # and has the smallest spread; `keep` gives the last token H_w x a middle one
    n, w = 40, 8
    ws = {m: _expected_weights(n, w, m) for m in ("keep", "full", "weight")}
    assert max(ws["weight"][w - 1:]) == pytest.approx(min(ws["weight"][w - 1:]))
    assert ws["keep"][-1] / ws["keep"][20] == pytest.approx(sum(1 / k for k in range(1, w + 1)))
    assert ws["full"][-1] / ws["full"][20] == pytest.approx(1 / w)
    spread = {m: torch.tensor(v).std() / torch.tensor(v).mean() for m, v in ws.items()}
    assert spread["weight"] < spread["full"] < spread["keep"]
    # the same over the eligible tokens only (padding decoded first, pad_keep 0)
    elig = torch.tensor([False] * 4 + [True] * 6)
    assert _expected_weights(10, 3, "weight", elig)[4:] == pytest.approx(weight)
    assert _expected_weights(10, 3, "weight", elig)[:4] == [0.0] * 4


def test_tabom_loss_weight_scales_each_rows_reconstruction():
    logp = torch.tensor([[-1.0, -2.0, -6.0], [-4.0, -9.0, -9.0]])
    ent = torch.zeros(2, 3)
    steps = torch.tensor([[0, 1, 2], [0, 0, 0]])
    valid = torch.tensor([[True, True, True], [True, False, False]])
    w = 3
    weight = valid.sum(-1) / w  # |N| / w: 1 and 1/3
    out = tabom_loss(logp, ent, steps, valid, lam=0.0, recon_weight=weight)
    assert out["recon"].item() == pytest.approx((3.0 * 1 + 4.0 / 3) / 2)  # = (sum CE / w) per row
    assert out["ce"].item() == pytest.approx((1 + 2 + 6 + 4) / 4)  # the logged CE stays unweighted


def test_window_frac_to_window():
    assert window_from_frac(0.125, 48) == 6
    assert window_from_frac(0.125, 256) == 32  # the paper's w
    assert window_from_frac(0.1, 25) == 3  # 2.5 rounds half up
    assert window_from_frac(0.01, 10) == 1  # at least 1
    from tabom.train import TrainConfig

    cfg = TrainConfig(window_frac=0.125)
    assert (cfg.window_for(48), cfg.window_for(256)) == (6, 32)
    assert TrainConfig(window=16).window_for(48) == 16
    assert TrainConfig().window_for(48) == 32  # neither set: the paper's w


# ----------------------------------------------------------------- T3D
def test_t3d_path_levels_per_block_by_hand():
    ce = torch.arange(1.0, 17.0)  # CE of position i = i + 1
    logp = -ce.unsqueeze(0)
    pos = torch.arange(16).unsqueeze(0)
    # both blocks decoded right to left: level 0 of block [0, 8) = positions 4-7,
    # of block [8, 16) = positions 12-15
    rank = torch.tensor([[7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8]])
    valid = torch.ones(1, 16, dtype=torch.bool)
    level0 = torch.tensor([5.0, 6, 7, 8, 13, 14, 15, 16]).mean()
    level1 = ce.mean()
    got = path_consistency_loss(logp, rank, valid, k=4, block=8, positions=pos)
    assert got.item() == pytest.approx(((level0 + level1) / 2).item())  # 9.5
    # the whole row as one block: 4 levels of the first 4, 8, 12, 16 in decode order
    whole = path_consistency_loss(logp, rank, valid, k=4)
    by_rank = ce[rank[0].argsort()]
    assert whole.item() == pytest.approx(sum(by_rank[:4 * (lv + 1)].mean().item() for lv in range(4)) / 4)
    # a partial block / fewer targets than k: block 0 holds 3 targets (all in
    # both levels), block 1 five; a second row is averaged with the first
    valid2 = torch.tensor([[True, False, True, False, True, False, False, False] + [True] * 5 + [False] * 3])
    rank2 = torch.arange(16).unsqueeze(0)
    got2 = path_consistency_loss(logp, rank2, valid2, k=4, block=8, positions=pos)
    l0 = torch.tensor([1.0, 3, 5, 9, 10, 11, 12]).mean()
    l1 = torch.tensor([1.0, 3, 5, 9, 10, 11, 12, 13]).mean()
    assert got2.item() == pytest.approx(((l0 + l1) / 2).item())
    both = path_consistency_loss(torch.cat([logp, logp]), torch.cat([rank, rank2]), torch.cat([valid, valid2]),
                                 k=4, block=8, positions=torch.cat([pos, pos]))
    assert both.item() == pytest.approx((got.item() + got2.item()) / 2)


def test_t3d_view_mask_direction_first_vs_last():
    order = torch.tensor([[3, 0, 2, 1]])
    lengths = torch.tensor([4])
    _, first = t3d_view(order, lengths, ratios=(0.5,), mask_from="first")
    _, last = t3d_view(order, lengths, ratios=(0.5,), mask_from="last")
    assert first[0].tolist() == [False, True, False, True]  # ranks 0, 1: decoded earliest
    assert last[0].tolist() == [True, False, True, False]  # ranks 2, 3
    # per block of 8 (T3D): int(0.5 * 8) = 4 and int(0.5 * 2) = 1 per block
    order, _, lengths, stop = _traj10()
    known, tgt = t3d_view(order, lengths, ratios=(0.5,), mask_from="first", block=8)
    assert _positions(~known[0]) == [0, 5, 6, 7, 8]  # block [0,8): ranks 0,1,4,5; block [8,10): rank 2
    known, tgt = t3d_view(order, lengths, ratios=(0.5,), mask_from="last", block=8)
    assert _positions(~known[0]) == [1, 2, 3, 4, 9]


def test_t3d_pad_cap_keeps_extra_padding_masked_without_loss():
    order, _, lengths, stop = _traj10()
    for pad_keep, want in ((2, list(range(8))), (0, list(range(6))), (None, list(range(10)))):
        known, tgt = t3d_view(order, lengths, ratios=(1.0,), mask_from="first", block=8,
                              stop_lengths=stop, pad_keep=pad_keep)
        assert not known.any()  # every token masked in the input ...
        assert _positions(tgt[0]) == want  # ... only these scored
    # the cap counts *masked* padding in position order (T3D's cumsum over p_mask)
    known, tgt = t3d_view(order, lengths, ratios=(0.5,), mask_from="first", block=8, stop_lengths=stop,
                          pad_keep=2)
    assert _positions(~known[0]) == [0, 5, 6, 7, 8] and _positions(tgt[0]) == [0, 5, 6, 7]
    known, tgt = t3d_view(order, lengths, ratios=(0.5,), mask_from="last", block=8, stop_lengths=stop,
                          pad_keep=0)
    assert _positions(~known[0]) == [1, 2, 3, 4, 9] and _positions(tgt[0]) == [1, 2, 3, 4]


def test_t3d_loss_skips_rows_without_targets_and_path_padding():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-5.0, -5.0, -5.0]])
    valid = torch.tensor([[True, True, True], [False, False, False]])
    rank = torch.tensor([[0, 1, 2], [0, 1, 2]])
    out = t3d_loss(lp, lp, lp, lp, valid, rank, lambda_path=1.0, path_k=1)
    only = t3d_loss(lp[:1], lp[:1], lp[:1], lp[:1], valid[:1], rank[:1], lambda_path=1.0, path_k=1)
    assert out["loss"].item() == pytest.approx(only["loss"].item())
    path_valid = torch.tensor([[True, True, False], [False, False, False]])  # token 2 is padding
    out = t3d_loss(lp, lp, lp, lp, valid, rank, lambda_path=1.0, path_k=1, path_valid=path_valid)
    assert out["path"].item() == pytest.approx((1 + 1.5) / 2)
    assert out["ddo"].item() == pytest.approx(1.5 * LN2)


# ------------------------------------------------ legacy behaviour, bit for bit
def _legacy_tabom_view(order, steps, lengths, window, generator):
    """tabom_view as it was before the padding / window options (local mode)."""
    known = torch.zeros(order.shape, dtype=torch.bool)
    targets = torch.zeros(order.shape, dtype=torch.bool)
    for b in range(order.shape[0]):
        n = int(lengths[b])
        by_rank = torch.empty(n, dtype=torch.long)
        by_rank[order[b, :n]] = steps[b, :n]
        cuts = [0] + [c for c in range(1, n) if by_rank[c] != by_rank[c - 1]]
        c = cuts[int(torch.randint(len(cuts), (1,), generator=generator))]
        rank = order[b, :n]
        known[b, :n] = rank < c
        targets[b, :n] = (rank >= c) & (rank < min(c + window, n))
    return known, targets


def _legacy_t3d_view(order, lengths, ratios, power, generator):
    B, G = order.shape
    w = torch.tensor([float(r) ** power for r in ratios])
    pick = torch.multinomial(w / w.sum(), B, replacement=True, generator=generator)
    targets = torch.zeros(B, G, dtype=torch.bool)
    known = torch.zeros(B, G, dtype=torch.bool)
    for b in range(B):
        n = int(lengths[b])
        n_mask = max(1, math.ceil(float(ratios[int(pick[b])]) * n))
        targets[b, :n] = order[b, :n] >= n - n_mask
        known[b, :n] = ~targets[b, :n]
    return known, targets


def _legacy_path(logp, rank, valid, k):
    big = torch.where(valid, rank, torch.full_like(rank, torch.iinfo(torch.long).max))
    local = big.argsort(-1).argsort(-1)
    n = valid.sum(-1)
    levels = (n + k - 1) // k
    total = logp.new_zeros(logp.shape[0])
    for lvl in range(int(levels.max())):
        inside = valid & (local < (lvl + 1) * k)
        ce = (-logp * inside).sum(-1) / inside.sum(-1).clamp(min=1)
        total = total + ce * (lvl < levels).to(ce)
    return (total / levels.clamp(min=1).to(total))[n > 0].mean()


def _legacy_tabom_loss(logp, entropy, steps, valid, lam=1.0, margin=0.2, tie_tol=1e-2):
    nll = -logp * valid
    recon = (nll.sum(-1) / valid.sum(-1).clamp(min=1))[valid.any(-1)].mean()
    rank = ranking_loss(entropy, steps, valid, margin, tie_tol)
    loss = recon + lam * rank["loss"] if lam else recon
    return {"loss": loss, "recon": recon.detach(), "rank": rank["loss"].detach(),
            "ce": ((-logp * valid).sum() / valid.sum().clamp(min=1)).detach(), "pair_acc": rank["pair_acc"],
            "pairs": rank["pairs"]}


def _legacy_t3d_loss(lp_real, lp_real_ref, lp_fake, lp_fake_ref, valid, rank, beta=0.1, alpha=0.5,
                     lambda_path=0.2, path_k=4):
    n = valid.sum(-1).clamp(min=1)
    mean = lambda x: (x * valid).sum(-1) / n  # noqa: E731
    ddo = ddo_loss(mean(lp_real), mean(lp_real_ref), mean(lp_fake), mean(lp_fake_ref), beta, alpha)
    path = _legacy_path(lp_real, rank, valid, path_k)
    return {"loss": ddo + lambda_path * path, "ddo": ddo.detach(), "path": path.detach(),
            "ce": ((-lp_real * valid).sum() / valid.sum().clamp(min=1)).detach()}


def _random_trajectories(B=6, G=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, G + 1, (B,), generator=g)
    steps = torch.full((B, G), -1)
    order = torch.full((B, G), -1)
    for b in range(B):
        n = int(lengths[b])
        st = torch.randperm(n, generator=g) // int(torch.randint(1, 3, (1,), generator=g))
        steps[b, :n] = st
        order[b, :n] = decode_order(st.tolist(), torch.rand(n, generator=g).tolist())
    return order, steps, lengths


def test_legacy_settings_reproduce_the_previous_views_and_losses_exactly():
    order, steps, lengths = _random_trajectories()
    for seed in range(5):
        gen = torch.Generator().manual_seed(seed)
        new = tabom_view(order, steps, lengths, torch.full((6,), 4), "local", gen,
                         eligible=None, truncated="keep")
        old = _legacy_tabom_view(order, steps, lengths, 4, torch.Generator().manual_seed(seed))
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
        new = t3d_view(order, lengths, (1.0, 0.75, 0.5, 0.25), 2.0, torch.Generator().manual_seed(seed),
                       mask_from="last", block=None, stop_lengths=lengths - 3, pad_keep=None)
        gen = torch.Generator().manual_seed(seed)
        old = _legacy_t3d_view(order, lengths, (1.0, 0.75, 0.5, 0.25), 2.0, gen)
        assert torch.equal(new[0], old[0]) and torch.equal(new[1], old[1])
        idx, valid = pack(new[1])
        logp = -torch.rand(idx.shape, generator=torch.Generator().manual_seed(seed)) * 5
        rank = order.gather(1, idx)
        got = path_consistency_loss(logp, rank, valid, 4, None, idx)
        assert torch.equal(got, _legacy_path(logp, rank, valid, 4))
