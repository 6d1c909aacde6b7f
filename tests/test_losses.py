"""Losses against independent numpy computations and their intended training effect."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpr_dist.losses import (
    NegativeSampler, align_infonce, full_softmax_ce, promotion, router_polarity_loss, sampled_softmax_logq,
    suppression,
)
from dpr_dist.modules import PlainItemTable

N = 30
D = 8


def np_logsumexp(x: np.ndarray, axis: int = -1) -> np.ndarray:
    m = x.max(axis=axis, keepdims=True)
    return (m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))).squeeze(axis)


def np_ce(logits: np.ndarray, target: np.ndarray) -> float:
    return float(np.mean(np_logsumexp(logits) - logits[np.arange(len(target)), target]))


class SpyTable(PlainItemTable):
    """Records every looked-up id and forbids full scoring."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(N, D)
        self.looked_up: list[torch.Tensor] = []

    def lookup(self, ids):
        self.looked_up.append(ids.reshape(-1))
        return super().lookup(ids)

    def score_all(self, u):
        raise AssertionError("sampled softmax must not score the whole catalogue")


def table_with(weight: torch.Tensor) -> PlainItemTable:
    table = PlainItemTable(weight.shape[0] - 1, weight.shape[1])
    with torch.no_grad():
        table.embedding.weight.copy_(weight)
    return table


def random_table(seed: int, dtype=torch.float32) -> tuple[PlainItemTable, torch.Tensor]:
    w = torch.randn(N + 1, D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    w[0] = 0
    return table_with(w.float()), w


# ---------------------------------------------------------------- full softmax

def test_full_softmax_ce_per_position_ignores_padding_and_the_padding_column():
    table, w = random_table(0)
    u = torch.randn(3, 4, D, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([[0, 0, 5, 7], [1, 2, 3, 4], [0, 9, 0, 30]])
    term = full_softmax_ce(table, u, targets)
    s = (u.reshape(-1, D).double() @ w.double().T).numpy()[:, 1:]  # independent: drop column 0
    t = targets.numpy().reshape(-1)
    keep = t != 0
    assert term.count.item() == keep.sum()
    assert term.mean().item() == pytest.approx(np_ce(s[keep], t[keep] - 1), rel=1e-5)


def test_full_softmax_ce_with_no_targets_is_zero_and_differentiable():
    table, _ = random_table(0)
    u = torch.randn(2, D, requires_grad=True)
    term = full_softmax_ce(table, u, torch.zeros(2, dtype=torch.long))
    term.mean().backward()
    assert term.mean().item() == 0.0 and term.count.item() == 0
    assert torch.equal(u.grad, torch.zeros_like(u))


# ---------------------------------------------------------------- sampled softmax

def test_sampled_softmax_matches_an_independent_logq_computation():
    table = SpyTable()
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(4, D, generator=gen, dtype=torch.float32)
    pos = torch.tensor([3, 7, 0, 12])
    q = torch.rand(N + 1, generator=gen) + 0.1
    q[0] = 0
    log_q = (q / q.sum()).log()
    negatives = torch.tensor([7, 1, 12, 12, 25])  # accidental hits for rows 1 and 3 (12 twice)
    loss = sampled_softmax_logq(u, pos, table, negatives, log_q).mean()

    E = table.embedding.weight.detach().double().numpy()
    lq = log_q.double().numpy()
    per_row = []
    for b in (0, 1, 3):  # row 2 is padding
        p = int(pos[b])
        ids = [p] + [int(n) for n in negatives if int(n) != p]
        logits = np.array([E[i] @ u[b].double().numpy() - lq[i] for i in ids])
        per_row.append(np_logsumexp(logits) - logits[0])
    assert loss.item() == pytest.approx(float(np.mean(per_row)), rel=1e-5)


def test_sampled_softmax_with_all_items_and_uniform_q_equals_full_softmax():
    table = PlainItemTable(N, D)
    u = torch.randn(5, D, dtype=torch.float32)
    pos = torch.tensor([1, 4, 30, 17, 4])
    uniform = torch.full((N + 1,), float(np.log(1.0 / N)))
    sampled = sampled_softmax_logq(u, pos, table, torch.arange(1, N + 1), uniform).mean()
    full = full_softmax_ce(table, u, pos).mean()
    torch.testing.assert_close(sampled, full, rtol=1e-6, atol=1e-6)


def test_sampled_softmax_gradient_reaches_only_the_looked_up_rows():
    table = SpyTable()
    log_q = torch.full((N + 1,), float(np.log(1.0 / N)))
    u = torch.randn(6, 3, D, requires_grad=True)  # per-position user states
    pos = torch.randint(0, N + 1, (6, 3), generator=torch.Generator().manual_seed(2))
    sampler = NegativeSampler(log_q)
    loss = sampled_softmax_logq(u, pos, table, sampler.draw(4, torch.Generator().manual_seed(3)), log_q).mean()
    loss.backward()
    used = torch.unique(torch.cat(table.looked_up))
    touched = torch.nonzero(table.embedding.weight.grad.abs().sum(1)).squeeze(1)
    assert set(touched.tolist()) <= set(used.tolist()) - {0}
    assert len(touched) > 0 and len(used) < N + 1
    # Same seed, same negatives, same loss.
    again = sampled_softmax_logq(u, pos, table, sampler.draw(4, torch.Generator().manual_seed(3)), log_q).mean()
    assert torch.equal(loss, again)


def test_sampled_negatives_follow_q_and_never_draw_padding():
    q = torch.zeros(N + 1)
    q[[2, 5]] = torch.tensor([0.25, 0.75])
    drawn = NegativeSampler(q.log()).draw(2000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {2, 5}
    assert float((drawn == 5).float().mean()) == pytest.approx(0.75, abs=0.03)


def test_negatives_are_drawn_from_catalogues_beyond_two_to_the_24_items():
    """torch.multinomial stops at 2^24 categories; a 20M-item catalogue must still sample, and
    exactly by q: here q puts 3/4 on the last item (id 2^24 + 5) and 1/4 on item 1."""
    n = 2**24 + 5
    q = torch.zeros(n + 1)
    q[[1, n]] = torch.tensor([0.25, 0.75])
    sampler = NegativeSampler(q.log())
    drawn = sampler.draw(4000, torch.Generator().manual_seed(0))
    assert set(drawn.tolist()) == {1, n}
    assert float((drawn == n).float().mean()) == pytest.approx(0.75, abs=0.03)
    # The CDF is built once: drawing again from the same sampler with the same seed repeats the
    # draw, as does a fresh sampler over the same q.
    assert torch.equal(drawn, sampler.draw(4000, torch.Generator().manual_seed(0)))
    assert torch.equal(drawn, NegativeSampler(q.log()).draw(4000, torch.Generator().manual_seed(0)))


# ---------------------------------------------------------------- suppression

def _np_mass(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    s = scores[:, 1:]
    p = np.exp(s - np_logsumexp(s)[:, None])
    return (p * mask[:, 1:]).sum(1)


def random_tags(seed: int, tags: int = 3) -> torch.Tensor:
    item_tag = torch.rand(N + 1, tags, generator=torch.Generator().manual_seed(seed)) < 0.3
    item_tag[0] = True  # the padding row never counts, even when marked
    return item_tag


@pytest.mark.parametrize("mode", ["mass", "log_complement"])
def test_suppression_value(mode):
    table, w = random_table(4)
    u = torch.randn(3, D, generator=torch.Generator().manual_seed(5))
    item_tag = random_tags(6)
    tag_ids = torch.tensor([2, 0, -1])  # the last row has no negative prompt: left out
    lse = table.catalogue_logsumexp(u, item_tag, tag_ids)
    scores = (u.double() @ w.double().T).numpy()
    mask = item_tag[:, tag_ids.clamp(min=0)].T.numpy()
    mass = _np_mass(scores, mask)[:2]
    expected = mass.mean() if mode == "mass" else (-np.log1p(-mass)).mean()
    assert suppression(lse, tag_ids, mode=mode).mean().item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("mode", ["mass", "log_complement"])
def test_suppression_lowers_tagged_mass_under_sgd(mode):
    torch.manual_seed(5)
    table = PlainItemTable(N, D)
    u = torch.randn(4, D, requires_grad=True)
    item_tag = torch.zeros(N + 1, 1, dtype=torch.bool)
    item_tag[1:11] = True  # items 1..10 carry the suppressed tag
    tag_ids = torch.zeros(4, dtype=torch.long)
    opt = torch.optim.SGD([u, *table.parameters()], lr=2.0)

    def tagged_mass() -> float:
        with torch.no_grad():
            return float(_np_mass(table.score_all(u).double().numpy(), item_tag[:, tag_ids].T.numpy()).mean())

    before = tagged_mass()
    for _ in range(30):
        opt.zero_grad()
        suppression(table.catalogue_logsumexp(u, item_tag, tag_ids), tag_ids, mode=mode).mean().backward()
        opt.step()
    assert tagged_mass() < 0.25 * before


def test_suppression_rejects_unknown_mode():
    with pytest.raises(ValueError, match="suppression mode 'hinge'; allowed: log_complement, mass"):
        suppression(torch.zeros(3, 1), torch.zeros(1, dtype=torch.long), mode="hinge")


# ---------------------------------------------------------------- align and router

@pytest.mark.parametrize("similarity", ["cosine", "dot"])
def test_align_infonce_value(similarity):
    gen = torch.Generator().manual_seed(6)
    z = torch.randn(5, D, generator=gen, dtype=torch.float64)
    centroids = torch.randn(4, D, generator=gen, dtype=torch.float64)
    tags = torch.tensor([0, 3, -1, 2, 2])
    loss = align_infonce(z, tags, centroids, temperature=0.2, similarity=similarity).mean()
    zn, cn = z.numpy(), centroids.numpy()
    if similarity == "cosine":
        zn = zn / np.linalg.norm(zn, axis=1, keepdims=True)
        cn = cn / np.linalg.norm(cn, axis=1, keepdims=True)
    keep = tags.numpy() >= 0
    assert loss.item() == pytest.approx(np_ce((zn @ cn.T / 0.2)[keep], tags.numpy()[keep]), rel=1e-10)


def test_router_polarity_loss_counts_only_labelled_clauses():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 0.5], [9.0, 9.0]], [[-3.0, 1.0], [1.0, 2.0], [0.0, 4.0]]],
                          dtype=torch.float64)
    polarity = torch.tensor([[1, -1, 0], [-1, 2, 1]])  # 0 = no clause, 2 = unlabelled: ignored
    rows = np.array([[2.0, -1.0], [0.5, 0.5], [-3.0, 1.0], [0.0, 4.0]])
    groups = np.array([0, 1, 1, 0])  # +1 -> group 0 (positive), -1 -> group 1 (negative)
    assert router_polarity_loss(logits, polarity).mean().item() == pytest.approx(np_ce(rows, groups), rel=1e-12)
    assert router_polarity_loss(logits, torch.zeros(2, 3, dtype=torch.long)).mean().item() == 0.0


def test_promotion_is_minus_log_mass_on_requested_tag_independently_computed():
    import math

    w = torch.tensor([[0.0], [1.0], [2.0], [0.5], [-1.0]])  # item i scores u * w[i]
    table = table_with(w)
    u = torch.tensor([[1.0], [1.0]], requires_grad=True)
    item_tag = torch.tensor([[True], [True], [False], [True], [False]])  # padding row marked: ignored
    tag_ids = torch.tensor([0, -1])  # row 2 has no positive tag: left out
    term = promotion(table.catalogue_logsumexp(u, item_tag, tag_ids), tag_ids)
    row = [1.0, 2.0, 0.5, -1.0]
    mass = (math.exp(1.0) + math.exp(0.5)) / sum(math.exp(v) for v in row)
    assert term.count.item() == 1
    assert term.mean().item() == pytest.approx(-math.log(mass), rel=1e-6)
    term.mean().backward()
    weight_grad = table.embedding.weight.grad[:, 0]
    assert weight_grad[1] < 0 and weight_grad[2] > 0  # tagged up, untagged down (descent: w - lr * grad)


def test_item_tag_infonce_matches_an_independent_computation_and_separates_tags():
    import math

    from dpr_dist.losses import item_tag_infonce

    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [3.0, 4.0]])
    tags = torch.tensor([[True, False], [True, True], [False, True], [False, False]])  # item 3 untagged
    # independent: centroids over tagged items, cosine / 0.1, target spread evenly over an item's tags
    c0 = [(1.0 + 0.8) / 2, (0.0 + 0.6) / 2]
    c1 = [(0.8 + 0.0) / 2, (0.6 + 1.0) / 2]

    def cos(a, b):
        return (a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b)

    total = 0.0
    for e, t in (([1.0, 0.0], [1, 0]), ([0.8, 0.6], [0.5, 0.5]), ([0.0, 1.0], [0, 1])):
        logits = [cos(e, c0) / 0.1, cos(e, c1) / 0.1]
        lse = math.log(sum(math.exp(v) for v in logits))
        total += -sum(w * (v - lse) for w, v in zip(t, logits))
    assert item_tag_infonce(emb, tags, 0.1).mean().item() == pytest.approx(total / 3, rel=1e-5)

    # a few SGD steps pull items of different tags apart
    x = torch.randn(20, 8, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    labels = torch.zeros(20, 2, dtype=torch.bool)
    labels[:10, 0] = True
    labels[10:, 1] = True
    before = item_tag_infonce(x, labels).mean().item()
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(20):
        opt.zero_grad()
        item_tag_infonce(x, labels).mean().backward()
        opt.step()
    assert item_tag_infonce(x, labels).mean().item() < 0.5 * before


def test_stage_sampler_uniform_draws_every_item_alike_and_corrects_by_one_over_n():
    """The stage option reaches the loss: with a popularity q that almost never draws item 7, the
    uniform sampler draws it as often as any other, and the logQ term is log(1/N) for everyone."""
    from types import SimpleNamespace

    from dpr_dist.training.config import StageConfig
    from dpr_dist.training.objectives import Context, _next_item_loss

    counts = torch.ones(N + 1)
    counts[1] = 1e6
    popularity_log_q = (counts / counts[1:].sum()).log()
    popularity_log_q[0] = float("-inf")
    ctx = Context(torch.zeros(1, D), torch.zeros(N + 1, 1, dtype=torch.bool), popularity_log_q,
                  torch.Generator().manual_seed(0))
    model = SimpleNamespace(item_table=SpyTable())
    u, pos = torch.randn(3, D), torch.tensor([2, 7, 30])
    draws = {}
    for sampler in ("popularity", "uniform"):
        stage = StageConfig(loss="sampled", num_negatives=3000, sampler=sampler)
        ctx.generator.manual_seed(1)
        _next_item_loss(model, u, pos, stage, ctx)
        draws[sampler] = model.item_table.looked_up[-1]
    assert float((draws["popularity"] == 7).float().mean()) < 1e-3
    share = torch.bincount(draws["uniform"], minlength=N + 1)[1:].float() / draws["uniform"].numel()
    assert share.min() > 0.5 / N and share.max() < 1.5 / N and (draws["uniform"] != 0).all()
    # Same negatives, independent computation with q = 1/N.
    negatives = draws["uniform"]
    w = model.item_table.embedding.weight.detach().numpy()
    logits = np.concatenate([(u.numpy() * w[pos.numpy()]).sum(1, keepdims=True), u.numpy() @ w[negatives.numpy()].T], 1)
    logits = logits + np.log(N)  # - log(1/N) for every item
    logits[:, 1:][negatives.numpy()[None, :] == pos.numpy()[:, None]] = -np.inf
    expected = np_logsumexp(logits) - logits[:, 0]
    got = sampled_softmax_logq(u, pos, model.item_table, negatives, ctx.log_q("uniform")).mean()
    assert got.item() == pytest.approx(float(expected.mean()), rel=1e-5)


def test_prompt_noise_jitters_only_real_clauses_on_the_unit_sphere_and_reproducibly():
    """steer.prompt_noise: every clause is moved (cosine to the original near 1/sqrt(1 + s^2 D)),
    stays unit length, padding slots are left bit-identical, and a seeded generator repeats the draw."""
    from dpr_dist.training.objectives import jitter_prompts

    dim, std = 384, 0.05
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(64, 2, dim, generator=gen), dim=-1)
    polarity = torch.tensor([[1, 0], [-1, 1], [0, 0], [2, -1]]).repeat(16, 1)
    got = jitter_prompts(emb, polarity, std, torch.Generator().manual_seed(5))
    real = polarity != 0
    assert torch.equal(got[~real], emb[~real])
    norms = got[real].norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    cos = (got[real] * emb[real]).sum(-1)
    assert float(cos.max()) < 0.99  # each real clause moved
    assert float(cos.mean()) == pytest.approx(1 / np.sqrt(1 + std**2 * dim), abs=0.02)
    assert torch.equal(jitter_prompts(emb, polarity, std, torch.Generator().manual_seed(5)), got)
    assert not torch.equal(jitter_prompts(emb, polarity, std, torch.Generator().manual_seed(6)), got)
