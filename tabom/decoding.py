"""The diffusion sampler: the one decoding loop of the toolkit.

Evaluation (``tabom_eval``), self-distillation and TDS all call
:func:`generate`. A canvas is the prompt followed by ``gen_length`` mask
tokens; each step runs one forward pass over the rows still decoding,
proposes a token for every masked position of the current block, scores how
sure the model is, and commits some of them. Committed tokens are never
re-masked.

Orders (how positions are chosen), after the reference decoders:

- ``confidence``  LLaDA ``low_confidence``: probability of the proposed token
  under the model's (unprocessed) distribution.
- ``random``      LLaDA ``random``: uniform random scores.
- ``maskgit_plus`` Dream: probability of the proposed token under the
  processed (temperature / top-p / top-k) distribution.
- ``topk_margin`` Dream: p1 - p2 of the processed distribution.
- ``entropy``     Dream's default: negative entropy of the processed
  distribution (computed in fp32 from log-softmax).
- ``origin``      Dream: every masked position is revealed independently with
  probability 1 - s/t (timestep schedule only).
With ``alg_temp > 0`` positions are sampled from softmax(score / alg_temp)
instead of taking the top scores.

Schedules (how many positions per step), per block:

- ``linear`` (LLaDA ``get_num_transfer_tokens``): the block's masked count is
  split evenly over the block's steps, the remainder one each over the first
  steps. ``steps`` must divide evenly across blocks.
- ``timesteps`` (Dream): t runs over linspace(1, eps, steps + 1); step i
  commits floor(n_masked * (1 - t_{i+1} / t_i)), the last step the rest.
- ``tokens_per_step=k``: k positions per step (fixed parallel decoding).
- ``threshold=tau`` (Fast-dLLM): every masked position of the block whose
  score is >= tau, and at least the best one; steps vary.

Token proposal: logits / temperature, then top-p, then top-k; greedy argmax
at temperature 0, otherwise Gumbel-max sampling in float64 (LLaDA's
sampler, written in log space; the same distribution as Dream's categorical
sampling).

KV cache (``cache``, Fast-dLLM ``generate_with_prefix_cache`` /
``generate_with_dual_cache``; natively loaded llada / dream only):

- ``none``   every step runs the whole canvas (exact; the default).
- ``prefix`` at each block start one full pass commits like any step and
  stores every layer's keys/values; the block's later steps recompute the
  block and everything after it against the stored prefix.
- ``dual``   as prefix, but only the block is recomputed, against the stored
  prefix and suffix.
Dream predicts column i from row i-1, so its recomputed rows start one column
before the block (the row before it sees the new block tokens). Every order,
schedule, threshold, k, EOS option and early exit works with the cache; all
rows decode the same block at a time.

Batching: prompts of different lengths are left-padded and masked out of
attention with re-based positions, so a row's greedy output does not depend
on the batch it is in.

Reference mode (``strict_reference=True``, greedy only): the original loops
rule for rule, LLaDA ``generate.py::generate`` for confidence / random and
Dream ``_sample`` for the other orders (see :meth:`_Decoder.run_reference`).
The default differs on purpose: it never proposes the mask token (the
originals may, which wastes the slot and can leave masks in the answer), so
Dream's scores are taken over the other tokens; it scores in fp32 and breaks
score ties by position; each row gets its own count; ``eos_last`` ranks
EOS / end-of-turn proposals last without renormalising the others. Options
the originals lack (threshold, tokens_per_step, cache, early_exit, Dream
blocks / EOS options, temperature > 0) are refused in reference mode.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tabom.canvas import left_padded
from tabom.models.kv_cache import ContextCache

ORDERS = ("confidence", "random", "maskgit_plus", "topk_margin", "entropy", "origin")
SCHEDULES = ("linear", "timesteps")
CACHES = ("none", "prefix", "dual")
LLADA_LOOP_ORDERS = ("confidence", "random")  # strict_reference: LLaDA's loop; the rest Dream's
PUSH_LAST = 1.0e6  # subtracted from the scores of EOS / end-of-turn proposals


@dataclass
class DecodeConfig:
    """Every setting of the sampler. ``validate()`` checks ranges and combinations."""

    gen_length: int = 256
    steps: int | None = None  # total steps; None = gen_length (one token per step)
    block_length: int | None = None  # None = gen_length (one block)
    order: str = "confidence"
    schedule: str = "linear"
    tokens_per_step: int | None = None
    threshold: float | None = None
    temperature: float = 0.0
    top_p: float | None = None
    top_k: int | None = None
    alg_temp: float | None = None
    eps: float = 1e-3  # Dream's final timestep
    ban_eos: bool = False  # LLaDA logits_eos_inf: never propose EOS
    eos_last: bool = False  # LLaDA confidence_eos_eot_inf: EOS / end-of-turn proposals go last
    early_exit: bool = False  # stop a row once nothing before its first EOS is masked
    seed: int | None = None
    cache: str = "none"  # none (exact) | prefix | dual: Fast-dLLM's block-wise KV cache
    # Reproduce the original loops token for token (LLaDA generate.py::generate for
    # confidence / random, Dream's _sample for the other orders); see run_reference.
    strict_reference: bool = False

    def replace(self, **changes) -> "DecodeConfig":
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(
                f"unknown decoder setting(s) {unknown}; known: {[f.name for f in dataclasses.fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def for_family(cls, family, **overrides) -> "DecodeConfig":
        """The family's default decoder (Dream: entropy + timesteps; LLaDA: confidence)."""
        base = dict(family.default_decoder)
        if base.get("order") in ("entropy", "maskgit_plus", "topk_margin", "origin"):
            base.setdefault("schedule", "timesteps")
        base.update(overrides)
        gen = base.get("gen_length", cls.gen_length)
        if base.get("block_length") and base["block_length"] > gen:
            base["block_length"] = gen
        return cls().replace(**base)

    # ---------------------------------------------------------- derived
    @property
    def block(self) -> int:
        return self.block_length or self.gen_length

    @property
    def num_blocks(self) -> int:
        return self.gen_length // self.block

    @property
    def steps_per_block(self) -> int | None:
        """Fixed number of steps per block (None for threshold decoding)."""
        if self.threshold is not None:
            return None
        if self.tokens_per_step is not None:
            return math.ceil(self.block / self.tokens_per_step)
        return (self.steps or self.gen_length) // self.num_blocks

    def validate(self) -> "DecodeConfig":
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        def need(cond, msg):
            if not cond:
                raise ValueError(msg)

        need(is_int(self.gen_length) and self.gen_length >= 1,
             f"gen_length={self.gen_length!r} must be an integer >= 1")
        need(self.order in ORDERS, f"order={self.order!r} must be one of {list(ORDERS)}")
        need(self.schedule in SCHEDULES, f"schedule={self.schedule!r} must be one of {list(SCHEDULES)}")
        if self.block_length is not None:
            need(is_int(self.block_length) and self.block_length >= 1,
                 f"block_length={self.block_length!r} must be an integer >= 1")
            need(self.block_length <= self.gen_length,
                 f"block_length={self.block_length} must be <= gen_length={self.gen_length}")
            need(self.gen_length % self.block_length == 0,
                 f"block_length={self.block_length} must divide gen_length={self.gen_length}")
        if self.steps is not None:
            need(is_int(self.steps) and self.steps >= 1, f"steps={self.steps!r} must be an integer >= 1")
            need(self.tokens_per_step is None,
                 "give steps or tokens_per_step, not both (tokens_per_step fixes the steps)")
            need(self.threshold is None, "give steps or threshold, not both (threshold decoding "
                                         "takes as many steps as it needs)")
            need(self.steps % self.num_blocks == 0,
                 f"steps={self.steps} must divide evenly across the {self.num_blocks} blocks "
                 f"(gen_length={self.gen_length} / block_length={self.block})")
        if self.tokens_per_step is not None:
            need(is_int(self.tokens_per_step) and self.tokens_per_step >= 1,
                 f"tokens_per_step={self.tokens_per_step!r} must be an integer >= 1")
            need(self.tokens_per_step <= self.block,
                 f"tokens_per_step={self.tokens_per_step} must be <= block_length={self.block}")
            need(self.threshold is None, "give tokens_per_step or threshold, not both")
        if self.threshold is not None:
            need(isinstance(self.threshold, (int, float)) and 0.0 < self.threshold <= 1.0,
                 f"threshold={self.threshold!r} must be in (0, 1]")
            need(self.order in ("confidence", "maskgit_plus", "topk_margin"),
                 f"threshold needs a probability-valued order (confidence, maskgit_plus, "
                 f"topk_margin), not order={self.order!r}")
        need(isinstance(self.temperature, (int, float)) and self.temperature >= 0.0
             and math.isfinite(self.temperature), f"temperature={self.temperature!r} must be >= 0")
        if self.top_p is not None:
            need(isinstance(self.top_p, (int, float)) and 0.0 < self.top_p <= 1.0,
                 f"top_p={self.top_p!r} must be in (0, 1]")
        if self.top_k is not None:
            need(is_int(self.top_k) and self.top_k >= 1, f"top_k={self.top_k!r} must be an integer >= 1")
        if self.alg_temp is not None:
            need(isinstance(self.alg_temp, (int, float)) and self.alg_temp >= 0.0,
                 f"alg_temp={self.alg_temp!r} must be >= 0")
            need(self.alg_temp == 0 or self.order not in ("origin", "random"),
                 f"alg_temp applies to score orders, not order={self.order!r}")
            need(self.alg_temp == 0 or self.threshold is None, "alg_temp and threshold exclude each other")
        need(isinstance(self.eps, float) and 0.0 < self.eps < 1.0, f"eps={self.eps!r} must be in (0, 1)")
        if self.order == "origin":
            need(self.schedule == "timesteps" and self.tokens_per_step is None and self.threshold is None,
                 "order='origin' reveals positions with probability 1 - s/t and needs "
                 "schedule='timesteps' (no tokens_per_step / threshold)")
        if self.seed is not None:
            need(is_int(self.seed), f"seed={self.seed!r} must be an integer")
        for name in ("ban_eos", "eos_last", "early_exit", "strict_reference"):
            value = getattr(self, name)
            need(isinstance(value, bool), f"{name}={value!r} must be true or false (a boolean, "
                                          f"not {type(value).__name__})")
        need(self.cache in CACHES, f"cache={self.cache!r} must be one of {list(CACHES)}")
        if self.strict_reference:
            self._validate_strict(need)
        return self

    def _validate_strict(self, need) -> None:
        """strict_reference=True accepts only what the original loops have: LLaDA's
        ``generate`` (order confidence / random) or Dream's ``_sample`` (the others)."""
        llada = self.order in LLADA_LOOP_ORDERS
        loop = ("LLaDA generate.py::generate" if llada else "Dream _sample")
        head = f"strict_reference=True reproduces {loop} (order={self.order!r}), which"
        need(self.temperature == 0, f"strict_reference=True reproduces greedy decoding only: "
                                    f"temperature={self.temperature!r} must be 0")
        need(self.threshold is None, f"{head} has no threshold rule: drop threshold={self.threshold!r} "
                                     "(Fast-dLLM's rule) or set strict_reference=false")
        need(self.tokens_per_step is None,
             f"{head} sets tokens per step only through steps: drop tokens_per_step="
             f"{self.tokens_per_step!r} and give steps=gen_length/{self.tokens_per_step}")
        need(self.cache == "none", f"{head} has no KV cache: cache={self.cache!r} needs "
                                   "strict_reference=false")
        need(not self.early_exit, f"{head} always runs every step: early_exit=True needs "
                                  "strict_reference=false")
        if llada:
            need(self.schedule == "linear", f"{head} splits each block's masks evenly over its "
                                            f"steps: schedule={self.schedule!r} must be 'linear'")
            need(self.top_p is None and self.top_k is None,
                 f"{head} has no top_p / top_k: top_p={self.top_p!r}, top_k={self.top_k!r} must be unset")
            need(not self.alg_temp, f"{head} has no alg_temp: alg_temp={self.alg_temp!r} must be unset")
        else:
            need(self.schedule == "timesteps", f"{head} uses the timestep schedule: "
                                               f"schedule={self.schedule!r} must be 'timesteps'")
            need(self.block == self.gen_length,
                 f"{head} decodes the whole canvas without blocks: block_length={self.block_length!r} "
                 f"must be unset or equal gen_length={self.gen_length}")
            need(not self.ban_eos and not self.eos_last,
                 f"{head} has no EOS options: ban_eos / eos_last must be false")


@dataclass
class DecodeOutput:
    """What :func:`generate` returns, one entry per prompt (in input order)."""

    sequences: torch.Tensor  # [B, gen_length] response canvas (mask id where never decided)
    token_ids: list[list[int]]  # response cut before the first EOS / end-of-turn
    texts: list[str]
    nfe: list[int]  # forward passes that included the row
    # Step at which each response token was committed (0-based forward index
    # of its row, -1 = never); with trajectory=True also the probability and
    # the entropy (fp32, log-softmax of the model's logits) at that step.
    step_map: torch.Tensor = field(default=None)
    confidence: torch.Tensor = field(default=None)
    entropy: torch.Tensor = field(default=None)
    config: dict = field(default_factory=dict)


# --------------------------------------------------------------------------
# token proposal and scores
# --------------------------------------------------------------------------


def filter_logits(logits: torch.Tensor, top_p: float | None, top_k: int | None,
                  fill: float = float("-inf")) -> torch.Tensor:
    """Dream's processing: nucleus (top-p) then top-k filtering with ``fill``
    (-inf; Dream's own code fills with the dtype's lowest finite value)."""
    if top_p is not None and top_p < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        remove = cum > top_p
        remove[..., 1:] = remove[..., :-1].clone()  # keep the first token above the threshold
        remove[..., 0] = False
        mask = torch.zeros_like(remove).scatter(-1, sorted_idx, remove)
        logits = logits.masked_fill(mask, fill)
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, fill)
    return logits


def propose_tokens(logits: torch.Tensor, temperature: float, top_p: float | None, top_k: int | None,
                   generator: torch.Generator | None):
    """(proposed token ids, processed logits). Greedy at temperature 0."""
    if temperature > 0:
        processed = filter_logits(logits / temperature, top_p, top_k)
        u = torch.rand(processed.shape, dtype=torch.float64, device=processed.device, generator=generator)
        gumbel = -torch.log(-torch.log(u.clamp_min(1e-300)))
        x0 = (processed.double() + gumbel).argmax(-1)
    else:
        processed = filter_logits(logits, top_p, top_k)
        x0 = processed.argmax(-1)
    return x0, processed


def order_scores(order: str, logits: torch.Tensor, processed: torch.Tensor, x0: torch.Tensor,
                 generator: torch.Generator | None) -> torch.Tensor:
    """Score of every proposal; higher = commit earlier."""
    if order == "confidence":
        return logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
    if order == "random" or order == "origin":
        return torch.rand(x0.shape, device=x0.device, generator=generator)
    logp = processed.log_softmax(-1)
    if order == "maskgit_plus":
        return logp.gather(-1, x0[..., None]).squeeze(-1).exp()
    if order == "topk_margin":
        top2 = torch.topk(logp, 2, dim=-1).values.exp()
        return top2[..., 0] - top2[..., 1]
    if order == "entropy":
        p = logp.exp()
        return torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)  # negative entropy
    raise ValueError(f"order={order!r} must be one of {list(ORDERS)}")


def dream_reference_scores(logits: torch.Tensor, order: str, top_p: float | None, top_k: int | None):
    """(scores, proposals) as Dream's ``sample_tokens`` computes them at temperature 0,
    in the logits' own dtype: top-p / top-k filtered with the lowest finite value,
    x0 = argmax of the probabilities (the mask token included); maskgit_plus p(x0),
    topk_margin p1 - p2 from a full sort, entropy sum p * log(p + 1e-10)."""
    if top_k is not None:
        top_k = min(top_k, logits.shape[-1])
    logits = filter_logits(logits, top_p, top_k, fill=torch.finfo(logits.dtype).min)
    probs = logits.softmax(-1)
    scores, x0 = probs.max(-1)
    if order == "topk_margin":
        ranked = probs.sort(-1, descending=True).values
        scores = ranked[..., 0] - ranked[..., 1]
    elif order == "entropy":
        scores = (probs * torch.log(probs + 1e-10)).sum(-1)
    return scores, x0


def push_stop_last(scores: torch.Tensor, x0: torch.Tensor, stop_ids: torch.Tensor) -> torch.Tensor:
    """LLaDA's ``confidence_eos_eot_inf``: EOS / end-of-turn proposals rank below
    every other proposal (keeping their order among themselves)."""
    return scores - PUSH_LAST * torch.isin(x0, stop_ids).to(scores.dtype)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of softmax(logits) in fp32, via log-softmax."""
    logp = logits.float().log_softmax(-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


# --------------------------------------------------------------------------
# schedules
# --------------------------------------------------------------------------


def linear_schedule(n_masked: int, steps: int) -> list[int]:
    """LLaDA's split of ``n_masked`` over ``steps``: even, remainder on the first steps."""
    base, rem = divmod(n_masked, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def timestep_count(n_masked: torch.Tensor, step: torch.Tensor, steps: int, eps: float) -> torch.Tensor:
    """Dream's count: floor(n * (1 - s/t)) on linspace(1, eps, steps+1); the last step takes all."""
    ts = torch.linspace(1.0, eps, steps + 1, device=n_masked.device)
    t, s = ts[step], ts[(step + 1).clamp(max=steps)]
    count = (n_masked.float() * (1.0 - s / t)).floor().long()
    return torch.where(step >= steps - 1, n_masked, count)


def _select_top(scores: torch.Tensor, candidates: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Boolean [A, K]: per row the ``count`` best-scoring candidates."""
    s = scores.masked_fill(~candidates, float("-inf"))
    if s.shape[0] == 1:  # one row: topk is cheaper than a full sort
        k = int(count[0])
        return torch.zeros_like(candidates).index_fill_(1, torch.topk(s[0], k).indices, True) & candidates
    order = torch.argsort(s, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(s.shape[1], device=s.device).expand_as(order))
    return (rank < count[:, None]) & candidates


def _sample_positions(scores, candidates, count, alg_temp, generator):
    """Dream's alg_temp: sample ``count`` positions from softmax(score / alg_temp)."""
    select = torch.zeros_like(candidates)
    for r in range(scores.shape[0]):
        k = int(count[r])
        if k <= 0:
            continue
        w = (scores[r] / alg_temp).masked_fill(~candidates[r], float("-inf")).softmax(-1)
        idx = torch.multinomial(w.float(), k, replacement=False, generator=generator)
        select[r, idx] = True
    return select & candidates


# --------------------------------------------------------------------------
# one step: proposals, scores, counts, commits
# --------------------------------------------------------------------------


@dataclass
class _Proposal:
    x0: torch.Tensor  # [A, K] proposed tokens
    scores: torch.Tensor  # [A, K] higher = commit earlier
    p_x0: torch.Tensor  # [A, K] probability of x0 under the model's distribution
    entropy: torch.Tensor | None  # [A, K] entropy (trajectory only)


def propose(cfg: DecodeConfig, logits: torch.Tensor, mask_id: int, eos_id: int, stop_ids: torch.Tensor,
            generator, trajectory: bool) -> _Proposal:
    """Proposals and order scores for the block's rows (``logits`` fp32, modified in place)."""
    if cfg.ban_eos:
        logits[..., eos_id] = float("-inf")
    # p(x0) for the confidence order and the trajectory uses the model's
    # distribution (after the EOS ban, as LLaDA does); the mask token itself is
    # then removed from the proposals only (committing it would be a no-op that
    # the reference loops silently re-decode).
    lse = logits.logsumexp(-1)
    ent = token_entropy(logits) if trajectory else None
    logits[..., mask_id] = float("-inf")
    if cfg.temperature == 0 and cfg.top_p is None and cfg.top_k is None:
        top, x0 = logits.max(-1)  # greedy: the proposal and its logit in one pass
        processed = logits
        p_x0 = (top - lse).exp()
    else:
        x0, processed = propose_tokens(logits, cfg.temperature, cfg.top_p, cfg.top_k, generator)
        p_x0 = (logits.gather(-1, x0[..., None]).squeeze(-1) - lse).exp()
    if cfg.order == "confidence":
        scores = p_x0
    else:
        scores = order_scores(cfg.order, logits, processed, x0, generator)
    if cfg.eos_last:
        scores = push_stop_last(scores, x0, stop_ids)
    return _Proposal(x0, scores, p_x0, ent)


def commit_mask(cfg: DecodeConfig, scores: torch.Tensor, candidates: torch.Tensor, step_in_block: torch.Tensor,
                linear: torch.Tensor | None, generator) -> torch.Tensor:
    """Boolean [A, K]: which masked positions of the block to commit this step."""
    spb = cfg.steps_per_block
    if cfg.order == "origin":
        ts = torch.linspace(1.0, cfg.eps, spb + 1, device=scores.device)
        sib = step_in_block
        p_reveal = torch.where(sib >= spb - 1, torch.ones_like(ts[sib]),
                               1.0 - ts[(sib + 1).clamp(max=spb)] / ts[sib])
        u = torch.rand(candidates.shape, device=scores.device, generator=generator)
        return candidates & (u < p_reveal[:, None])
    n_masked = candidates.sum(1)
    if cfg.threshold is not None:  # Fast-dLLM: the best one plus every other >= tau
        count = ((scores >= cfg.threshold) & candidates).sum(1).clamp(min=1)
    elif cfg.tokens_per_step is not None:
        count = torch.full_like(n_masked, cfg.tokens_per_step)
    elif linear is not None:
        count = linear[step_in_block.clamp(max=spb - 1)]
    else:
        count = timestep_count(n_masked, step_in_block, spb, cfg.eps)
    count = torch.minimum(count, n_masked)
    if cfg.alg_temp:
        return _sample_positions(scores, candidates, count, cfg.alg_temp, generator)
    return _select_top(scores, candidates, count)


class _Recorder:
    """Step map (always) and, for trajectories, probability / entropy at commit."""

    def __init__(self, B: int, G: int, P: int, trajectory: bool, device, bar=None):
        self.P = P
        self.step_map = torch.full((B, G), -1, dtype=torch.long, device=device)
        self.trajectory = trajectory
        self.confidence = torch.zeros((B, G), dtype=torch.float32, device=device) if trajectory else None
        self.entropy = torch.zeros((B, G), dtype=torch.float32, device=device) if trajectory else None
        self.bar = bar

    def record(self, act: torch.Tensor | None, cols: torch.Tensor, select: torch.Tensor,
               step: torch.Tensor, prop: _Proposal) -> None:
        """``act`` None = every row; ``step`` [A] forward index of each row."""
        resp = cols - self.P
        self._put(self.step_map, act, resp, select, step[:, None].expand_as(select))
        if self.trajectory:
            self._put(self.confidence, act, resp, select, prop.p_x0.float())
            self._put(self.entropy, act, resp, select, prop.entropy)
        if self.bar is not None:
            self.bar.update(int(select.sum()))

    @staticmethod
    def _put(table, act, resp, select, values):
        if act is None:
            old = table.gather(1, resp)
            table.scatter_(1, resp, torch.where(select, values.to(table.dtype), old))
        else:
            sub = table[act]
            old = sub.gather(1, resp)
            table[act] = sub.scatter_(1, resp, torch.where(select, values.to(table.dtype), old))


# --------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------


def _as_prompt_lists(prompts) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() == 1:
            prompts = prompts[None]
        return [row.tolist() for row in prompts]
    out = [list(map(int, p)) for p in prompts]
    if not out:
        raise ValueError("prompts is empty: give at least one prompt")
    return out


class _Decoder:
    """State of one batched decode; the two loops below drive it."""

    def __init__(self, model, rows, cfg: DecodeConfig, generator, trajectory: bool, bar):
        ids = model.special_ids
        self.model, self.cfg, self.generator, self.trajectory = model, cfg, generator, trajectory
        self.ids = ids
        device = model.device
        canvas = left_padded(rows, pad_id=ids.pad, fill_id=ids.mask, length=cfg.gen_length, device=device)
        self.x, self.attn, self.P = canvas.ids, canvas.attention_mask, canvas.prompt_len
        self.use_attn = canvas.has_padding
        self.position_ids = canvas.position_ids if self.use_attn else None
        B, K = len(rows), cfg.block
        self.B, self.K = B, K
        self.stop_ids = torch.tensor(ids.stop_ids, device=device)
        self.linear = None
        if cfg.threshold is None and cfg.tokens_per_step is None and cfg.schedule == "linear" \
                and cfg.order != "origin":
            self.linear = torch.tensor(linear_schedule(K, cfg.steps_per_block), device=device)
        self.block = torch.zeros(B, dtype=torch.long, device=device)
        self.step_in_block = torch.zeros(B, dtype=torch.long, device=device)
        self.nfe = torch.zeros(B, dtype=torch.long, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.offsets = torch.arange(K, device=device)
        self.rows = torch.arange(B, device=device)
        self.rec = _Recorder(B, cfg.gen_length, self.P, trajectory, device, bar)

    def step(self, act: torch.Tensor | None, cols: torch.Tensor, logits: torch.Tensor) -> None:
        """Commit from ``logits`` ([A, K, V], the block columns ``cols`` of rows ``act``;
        None = all rows) and advance the rows' block counters."""
        cfg = self.cfg
        x = self.x if act is None else self.x[act]
        nfe = self.nfe if act is None else self.nfe[act]
        nfe = nfe + 1
        cur = x.gather(1, cols)
        candidates = cur == self.ids.mask
        prop = propose(cfg, logits.float(), self.ids.mask, self.ids.eos, self.stop_ids, self.generator,
                       self.trajectory)
        sib = self.step_in_block if act is None else self.step_in_block[act]
        select = commit_mask(cfg, prop.scores, candidates, sib, self.linear, self.generator)
        new = torch.where(select, prop.x0, cur)
        x.scatter_(1, cols, new)
        self.rec.record(act, cols, select, nfe - 1, prop)
        finished = (new != self.ids.mask).all(1)
        sib = (sib + 1).masked_fill_(finished, 0)
        block = (self.block if act is None else self.block[act]) + finished
        done = block >= cfg.num_blocks
        if cfg.early_exit:
            done = done | _answer_settled(x[:, self.P:], self.stop_ids, self.ids.mask)
        if act is None:
            self.nfe, self.step_in_block, self.block, self.done = nfe, sib, block, done
        else:
            self.x[act], self.nfe[act], self.step_in_block[act] = x, nfe, sib
            self.block[act], self.done[act] = block, done

    # ---------------------------------------------------------- exact loop
    def run_exact(self) -> None:
        """cache=none: every step runs the whole canvas of the rows still decoding."""
        model, P, K = self.model, self.P, self.K
        while True:
            n_done = int(self.done.sum())
            if n_done == self.B:
                break
            act = None if n_done == 0 else (~self.done).nonzero().squeeze(1)
            block = self.block if act is None else self.block[act]
            cols = (P + block * K)[:, None] + self.offsets
            xa = self.x if act is None else self.x[act]
            attn = None
            if self.use_attn:
                attn = self.attn if act is None else self.attn[act]
            self.step(act, cols, model(xa, attention_mask=attn, positions=cols))

    # --------------------------------------------------------- cached loop
    def run_cached(self) -> None:
        """cache=prefix|dual (Fast-dLLM): at each block start one full pass
        refreshes the keys/values of the whole canvas and commits like any step;
        then only the block (dual) or the block and everything after it (prefix)
        is recomputed against the cached context. Dream's logit for column i
        comes from row i-1, so the recomputed rows start one column earlier.

        All rows decode the same block at a time (a row that finishes its block
        waits, and is not computed, until the others finish); a row's outputs
        do not depend on that."""
        cfg, model, P, K = self.cfg, self.model, self.P, self.K
        L = self.x.shape[1]
        shift = model.logit_shift
        for b in range(cfg.num_blocks):
            act = (~self.done).nonzero().squeeze(1)
            if act.numel() == 0:
                break
            s, e = P + b * K, P + (b + 1) * K
            cols = (s + self.offsets)[None].expand(act.numel(), -1)
            attn = self.attn[act] if self.use_attn else None
            logits, full = model.forward_refresh(self.x[act], attn, cols)
            self.step(act, cols, logits)
            q0, q1 = s - shift, (e if cfg.cache == "dual" else L)
            spans = [(0, q0)] + ([(q1, L)] if q1 < L else [])
            context = ContextCache.from_cache(full, spans)
            del full
            key_mask = None
            if self.use_attn:
                key_mask = torch.cat([self.attn[act, a:z] for a, z in spans] + [self.attn[act, q0:q1]], 1)
            while True:
                live = (~self.done[act]) & (self.block[act] == b)
                n_live = int(live.sum())
                if n_live == 0:
                    break
                if n_live < act.numel():
                    keep = live.nonzero().squeeze(1)
                    act = act[keep]
                    context.keep_rows(keep)
                    if key_mask is not None:
                        key_mask = key_mask[keep]
                    cols = cols[:n_live]
                pos = (self.position_ids[act, q0:q1] if self.position_ids is not None
                       else torch.arange(q0, q1, device=self.x.device)[None].expand(act.numel(), -1))
                logits = model.forward_rows(self.x[act, q0:q1], pos, context, key_mask, n_out=K)
                self.step(act, cols, logits)

    # ------------------------------------------------------ reference loop
    def run_reference(self) -> None:
        """strict_reference=True: the original loops, rule for rule (greedy).

        Unlike the default loop, every step runs the whole canvas of every row
        and scores it in the model's dtype; the mask token may be proposed (a
        position that "commits" it stays masked and competes again later); a
        block ends after its steps whether or not it is full; positions are
        chosen by ``torch.topk`` over the whole row, as the originals do.
        """
        if self.cfg.order in LLADA_LOOP_ORDERS:
            self._reference_llada()
        else:
            self._reference_dream()

    def _reference_forward(self) -> torch.Tensor:
        """Logits of the whole canvas [B, L, V] (model dtype, family shift applied)."""
        self.nfe += 1
        return self.model(self.x, attention_mask=self.attn if self.use_attn else None)

    def _reference_record(self, before: torch.Tensor, logits: torch.Tensor) -> None:
        """Step map (and trajectory) of the response columns that changed this step."""
        P, mask_id, rec = self.P, self.ids.mask, self.rec
        old, new = before[:, P:], self.x[:, P:]
        committed = (old == mask_id) & (new != mask_id)
        rec.step_map[(old != mask_id) & (new == mask_id)] = -1  # Dream's re-mask (see _reference_dream)
        p_x0 = ent = None
        if self.trajectory:
            lg = logits[:, P:].float()
            ent = token_entropy(lg)
            p_x0 = lg.softmax(-1).gather(-1, new[..., None]).squeeze(-1)
        cols = (P + torch.arange(new.shape[1], device=new.device))[None].expand_as(new)
        rec.record(None, cols, committed, self.nfe - 1, _Proposal(new, None, p_x0, ent))

    def _reference_llada(self) -> None:
        """LLaDA ``generate.py::generate`` (remasking low_confidence / random, temperature 0,
        ``logits_eos_inf`` = ban_eos, ``confidence_eos_eot_inf`` = eos_last)."""
        cfg, x, P, K = self.cfg, self.x, self.P, self.K
        B, L = x.shape
        mask_id, spb = self.ids.mask, cfg.steps_per_block
        stops = [self.ids.eos] + ([self.ids.eot] if self.ids.eot is not None else [])
        step_ids = torch.arange(spb, device=x.device)
        for b in range(cfg.num_blocks):
            end = P + (b + 1) * K
            n_block = (x[:, end - K:end] == mask_id).sum(1)
            counts = (n_block // spb)[:, None] + (step_ids[None] < (n_block % spb)[:, None]).long()
            for i in range(spb):
                masked = x == mask_id
                logits = self._reference_forward()
                if cfg.ban_eos:
                    logits[:, :, self.ids.eos] = float("-inf")
                x0 = logits.argmax(-1)
                before = x.clone()
                traj_logits = logits.clone() if self.trajectory and cfg.eos_last else logits
                if cfg.eos_last:  # at temperature 0 the reference's chained assignment hits EOS and EoT
                    logits[:, :, stops] = float("-inf")
                if cfg.order == "confidence":
                    conf = logits.softmax(-1).gather(-1, x0[..., None]).squeeze(-1)
                else:
                    conf = torch.rand((B, L), device=x.device, generator=self.generator)
                conf[:, end:] = float("-inf")
                x0 = torch.where(masked, x0, x)
                conf = torch.where(masked, conf, float("-inf"))
                select = torch.zeros_like(masked)
                for j in range(B):
                    select[j, torch.topk(conf[j], k=int(counts[j, i])).indices] = True
                x[select] = x0[select]
                self._reference_record(before, traj_logits)
            self.block += 1
        self.done[:] = True

    def _reference_dream(self) -> None:
        """Dream ``_sample`` (alg maskgit_plus / topk_margin / entropy / origin, temperature 0,
        top_p / top_k / alg_temp as given, one canvas without blocks)."""
        cfg, x = self.cfg, self.x
        B = x.shape[0]
        mask_id, steps = self.ids.mask, cfg.steps_per_block
        ts = torch.linspace(1, cfg.eps, steps + 1, device=x.device)
        rows = torch.arange(B, device=x.device)[:, None]
        for i in range(steps):
            masked = x == mask_id
            logits = self._reference_forward()
            mask_logits = logits[masked]
            t, s = ts[i], ts[i + 1]
            before = x.clone()
            if cfg.order == "origin":
                p_transfer = 1 - s / t if i < steps - 1 else 1
                n_masked = mask_logits.shape[0]
                x0 = torch.full((n_masked,), mask_id, dtype=torch.long, device=x.device)
                reveal = torch.rand((n_masked,), device=x.device, generator=self.generator) < p_transfer
                x0[reveal] = dream_reference_scores(mask_logits[reveal], "maskgit_plus",
                                                    cfg.top_p, cfg.top_k)[1]
                x[masked] = x0
            else:
                conf, x0 = dream_reference_scores(mask_logits, cfg.order, cfg.top_p, cfg.top_k)
                # one count for the whole batch, from the mean masked count of the rows
                mean_masked = masked.sum() / B
                n = int(mean_masked * (1 - s / t)) if i < steps - 1 else int(mean_masked)
                full = torch.full(x.shape, float("-inf"), dtype=logits.dtype, device=x.device)
                full[masked] = conf
                if n > 0:
                    if cfg.alg_temp:
                        idx = torch.multinomial((full / cfg.alg_temp).softmax(-1), n,
                                                generator=self.generator)
                    else:
                        idx = torch.topk(full, n).indices
                    # a row with fewer masks than n also takes unmasked columns, which
                    # then receive the mask id: the reference re-masks them too
                    cand = torch.full_like(x, mask_id)
                    cand[masked] = x0
                    x[rows.expand_as(idx), idx] = cand[rows.expand_as(idx), idx]
            self._reference_record(before, logits)
        self.block += 1
        self.done[:] = True


@torch.no_grad()
def generate(model, prompts, config: DecodeConfig | None = None, progress: bool = False,
             trajectory: bool = False, **overrides) -> DecodeOutput:
    """Decode ``prompts`` (token-id lists of any lengths) with ``model``.

    The step map is always returned; ``trajectory=True`` also records the
    probability and entropy of each token at the step it was committed.

    ``config`` (default: :class:`DecodeConfig`) may be overridden by keyword,
    e.g. ``generate(model, ids, gen_length=64, order="entropy")``.
    """
    cfg = (config or DecodeConfig()).replace(**overrides) if overrides else (config or DecodeConfig())
    cfg.validate()
    check_model_supports(model, cfg)
    rows = _as_prompt_lists(prompts)
    if model.logit_shift and min(len(r) for r in rows) == 0:
        raise ValueError(f"prompts: the {model.family.name} family predicts token i from position i-1, "
                         "so every prompt needs at least one token")
    generator = None
    if cfg.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(cfg.seed)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(rows) * cfg.gen_length, desc="decoding", unit="tok", leave=False)
    dec = _Decoder(model, rows, cfg, generator, trajectory, bar)
    if cfg.strict_reference:
        dec.run_reference()
    elif cfg.cache == "none":
        dec.run_exact()
    else:
        dec.run_cached()
    if bar is not None:
        bar.close()

    seqs = dec.x[:, dec.P:]
    ids = model.special_ids
    token_ids, texts = [], []
    tok = getattr(model, "tokenizer", None)
    for row in seqs.tolist():
        cut = len(row)
        for j, t in enumerate(row):
            if t in ids.stop_ids or t == ids.mask:
                cut = j
                break
        token_ids.append(row[:cut])
        texts.append(tok.decode(row[:cut], skip_special_tokens=True) if tok is not None else "")
    rec = dec.rec
    return DecodeOutput(sequences=seqs.cpu(), token_ids=token_ids, texts=texts, nfe=dec.nfe.tolist(),
                        step_map=rec.step_map.cpu(),
                        confidence=rec.confidence.cpu() if trajectory else None,
                        entropy=rec.entropy.cpu() if trajectory else None,
                        config=cfg.to_dict())


def check_model_supports(model, cfg: DecodeConfig) -> None:
    """Errors for settings this model cannot run, before any forward pass."""
    if cfg.cache != "none" and not getattr(model, "is_native", False):
        raise ValueError(
            f"cache={cfg.cache!r} needs a natively loaded llada or dream checkpoint (the KV cache is "
            "built on transformers' Llama / Qwen2 modules); this model was loaded through remote "
            "code: use cache=none"
        )


def _answer_settled(resp: torch.Tensor, stop_ids: torch.Tensor, mask_id: int) -> torch.Tensor:
    """Rows whose first committed EOS / end-of-turn has no mask before it."""
    is_stop = torch.isin(resp, stop_ids)
    has_stop = is_stop.any(1)
    first = torch.where(has_stop, is_stop.float().argmax(1), torch.full_like(has_stop, resp.shape[1], dtype=torch.long))
    before = torch.arange(resp.shape[1], device=resp.device)[None] < first[:, None]
    return has_stop & ~((resp == mask_id) & before).any(1)


def encode_prompts(model, texts: Sequence[str], chat: bool = True,
                   system_prompt: str | None = None) -> list[list[int]]:
    """Token ids for ``texts``, through the tokenizer's chat template when ``chat``."""
    tok = model.tokenizer
    out = []
    for text in texts:
        if chat:
            messages = []
            if system_prompt:
                messages.append({"role": "system", "content": system_prompt})
            messages.append({"role": "user", "content": text})
            rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            out.append(tok(rendered, add_special_tokens=model.family.add_special_tokens_with_chat_template)
                       ["input_ids"])
        else:
            out.append(tok(text)["input_ids"])
    return out
