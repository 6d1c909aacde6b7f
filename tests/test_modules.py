"""Backbones, item table and the DPR steering path."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dpr_dist.modules import (
    NEGATIVE, NO_CLAUSE, POSITIVE, UNLABELLED, DPRModel, ModelConfig, PlainItemTable, build_backbone, build_model,
)
from dpr_dist.modules.backbones.sasrec import SASRec

NUM_ITEMS = 40
PROMPT_DIM = 12


def small_cfg(**overrides) -> ModelConfig:
    base = dict(hidden=16, max_len=12, num_blocks=2, num_heads=2, dropout=0.0, prompt_dim=PROMPT_DIM,
                projection_hidden=20, expert_hidden=24, router_hidden=10)
    base.update(overrides)
    return ModelConfig(**base)


def random_hist(batch: int, length: int, seed: int, min_len: int = 1) -> torch.Tensor:
    """Left-padded histories of random lengths in [min_len, length]."""
    gen = torch.Generator().manual_seed(seed)
    hist = torch.randint(1, NUM_ITEMS + 1, (batch, length), generator=gen)
    lengths = torch.randint(min_len, length + 1, (batch,), generator=gen)
    pads = torch.arange(length).unsqueeze(0) < (length - lengths).unsqueeze(1)
    return hist.masked_fill(pads, 0)


def model_for(backbone: str = "sasrec", seed: int = 0, **overrides) -> DPRModel:
    torch.manual_seed(seed)
    return build_model(small_cfg(backbone=backbone, **overrides), NUM_ITEMS).eval()


# ---------------------------------------------------------------- config and registry

def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match=r"ModelConfig.routing='soft'; allowed: learned, hard"):
        ModelConfig(routing="soft")
    with pytest.raises(ValueError, match=r"ModelConfig.hidden=30 is not divisible by expert_heads=4"):
        ModelConfig(hidden=30, num_heads=1, expert_heads=4)
    with pytest.raises(ValueError, match=r"ModelConfig.dropout must be in \[0, 1\), got 1.5"):
        ModelConfig(dropout=1.5)


def test_unknown_backbone_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"backbone='bert4rec' is not registered; known: gru4rec, sasrec"):
        build_backbone(ModelConfig(backbone="bert4rec"))


def test_parameter_groups_are_named_submodules():
    model = model_for()
    names = {name.split(".")[0] for name, _ in model.named_parameters()}
    assert names == {"backbone", "item_table", "projection", "experts", "router", "fusion"}
    assert len(model.experts.pos) == 2 and len(model.experts.neg) == 2 and model.experts.shared is not None


# ---------------------------------------------------------------- item table

def test_item_table_padding_row_is_zero_and_never_trained():
    torch.manual_seed(0)
    table = PlainItemTable(NUM_ITEMS, 8)
    assert table.num_rows == NUM_ITEMS + 1 and table.dim == 8
    assert torch.equal(table.lookup(torch.tensor([0, 0])), torch.zeros(2, 8))
    u = torch.randn(3, 8)
    scores = table.score_all(u)
    assert torch.equal(scores, u @ table.embedding.weight.detach().T)
    # Gradient from both paths (lookup of id 0 and the padding column of the scores).
    loss = scores.sum() + table.lookup(torch.tensor([[0, 3]])).sum()
    loss.backward()
    grad = table.embedding.weight.grad
    assert torch.equal(grad[0], torch.zeros(8))
    assert grad[3].abs().sum() > 0


def test_frozen_table_gives_no_gradient():
    table = PlainItemTable(NUM_ITEMS, 8)
    table.frozen = True
    u = torch.randn(2, 8, requires_grad=True)
    (table.score_all(u).sum() + (u * table.lookup(torch.tensor([1, 2]))).sum()).backward()
    assert table.embedding.weight.grad is None
    assert torch.count_nonzero(u.grad) > 0


# ---------------------------------------------------------------- backbones

@pytest.mark.parametrize("backbone,impl", [("sasrec", "fused"), ("sasrec", "reference"), ("gru4rec", "fused")])
def test_backbone_is_causal_exactly(backbone, impl):
    model = model_for(backbone, attention_impl=impl)
    hist = random_hist(6, 10, seed=1, min_len=10)
    changed = hist.clone()
    changed[:, 6:] = torch.randint(1, NUM_ITEMS + 1, (6, 4), generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        H = model.encode_history(hist).H
        H2 = model.encode_history(changed).H
    assert torch.equal(H[:, :6], H2[:, :6])
    assert not torch.allclose(H[:, 6:], H2[:, 6:])


@pytest.mark.parametrize("backbone,layout", [("sasrec", "original"), ("sasrec", "pre"), ("sasrec", "post"), ("gru4rec", "original")])
def test_more_left_padding_gives_the_same_user_state(backbone, layout):
    model = model_for(backbone, sasrec_layout=layout)
    hist = random_hist(5, 7, seed=2)
    padded = torch.cat([torch.zeros(5, 5, dtype=torch.long), hist], dim=1)
    with torch.no_grad():
        short, long = model.encode_history(hist), model.encode_history(padded)
        H, h, H_long, h_long = short.H, short.h, long.H, long.h
    torch.testing.assert_close(h_long, h, rtol=0, atol=1e-6)
    torch.testing.assert_close(H_long[:, 5:], H, rtol=0, atol=1e-6)
    assert torch.equal(H_long[:, :5], torch.zeros(5, 5, 16))  # padding states are zero


def test_fused_attention_matches_reference():
    fused = model_for("sasrec", attention_impl="fused")
    reference = model_for("sasrec", attention_impl="reference")
    reference.load_state_dict(fused.state_dict())
    hist = random_hist(8, 12, seed=3)
    t = torch.randn(8, 2, PROMPT_DIM)
    pol = torch.tensor([[POSITIVE, NEGATIVE]] * 8)
    with torch.no_grad():
        a, b = fused(hist, t, pol), reference(hist, t, pol)
    torch.testing.assert_close(a.h, b.h, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.u, b.u, rtol=0, atol=1e-5)
    assert not torch.equal(a.u, a.h)


def test_history_longer_than_max_len_keeps_the_most_recent_items():
    model = model_for()
    hist = random_hist(3, 20, seed=4, min_len=20)
    with torch.no_grad():
        h = model.encode_history(hist).h
        h_recent = model.encode_history(hist[:, -12:]).h
    assert torch.equal(h, h_recent)


@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_empty_history_gives_finite_state(backbone):
    model = model_for(backbone)
    hist = torch.zeros(2, 6, dtype=torch.long)
    with torch.no_grad():
        out = model(hist, torch.randn(2, 1, PROMPT_DIM), torch.tensor([[POSITIVE], [NEGATIVE]]))
    assert torch.isfinite(out.u).all()


def test_gru4rec_shapes():
    cfg = small_cfg(backbone="gru4rec", gru_layers=2)
    backbone = build_backbone(cfg)
    hist_emb = torch.randn(4, 9, 16)
    pad_mask = random_hist(4, 9, seed=5) == 0
    H = backbone(hist_emb, pad_mask)
    assert H.shape == (4, 9, 16)
    assert torch.equal(H[pad_mask], torch.zeros(int(pad_mask.sum()), 16))


def test_sasrec_rejects_overlong_input():
    with pytest.raises(ValueError, match="history length 13 exceeds max_len 12"):
        SASRec(small_cfg())(torch.randn(1, 13, 16), torch.zeros(1, 13, dtype=torch.bool))


# ---------------------------------------------------------------- steering

@pytest.mark.parametrize("gate_floor", [0.0, 0.05])
def test_no_prompt_leaves_the_user_vector_bit_exact(gate_floor):
    model = model_for(fusion_gate_floor=gate_floor)
    hist = random_hist(4, 10, seed=6)
    t = torch.randn(4, 3, PROMPT_DIM)
    pol = torch.tensor([[0, 0, 0], [POSITIVE, 0, NEGATIVE], [0, 0, 0], [0, UNLABELLED, 0]])
    with torch.no_grad():
        plain = model(hist)
        prompted = model(hist, t, pol)
        empty = model(hist, torch.zeros(4, 0, PROMPT_DIM), torch.zeros(4, 0, dtype=torch.long))
    assert plain.u is plain.h and empty.u is empty.h
    assert torch.equal(prompted.u[[0, 2]], plain.h[[0, 2]])
    assert not torch.equal(prompted.u[1], plain.h[1]) and not torch.equal(prompted.u[3], plain.h[3])


def test_rows_without_clauses_keep_h_byte_for_byte_even_negative_zero():
    model = model_for()
    hist = random_hist(2, 6, seed=10)
    history = model.encode_history(hist)
    h = history.h.detach().clone()
    h[:, 0] = -0.0  # -0.0 + 0.0 would be +0.0: "u == h" must hold for the bytes, not just the values
    pol = torch.tensor([[NO_CLAUSE], [POSITIVE]])
    with torch.no_grad():
        u = model.steer(dataclasses.replace(history, h=h), torch.randn(2, 1, PROMPT_DIM), pol).u
    assert u[0].numpy().tobytes() == h[0].numpy().tobytes()


def test_padding_clause_contributes_exactly_nothing():
    model = model_for()
    hist = random_hist(3, 10, seed=7)
    t = torch.randn(3, 2, PROMPT_DIM)
    pol = torch.tensor([[POSITIVE, NEGATIVE]] * 3)
    t_padded = torch.cat([t[:, :1], torch.randn(3, 1, PROMPT_DIM), t[:, 1:]], dim=1)
    pol_padded = torch.tensor([[POSITIVE, NO_CLAUSE, NEGATIVE]] * 3)
    with torch.no_grad():
        plain = model.user_vectors(hist, t, pol)
        padded = model.user_vectors(hist, t_padded, pol_padded)
        # The same clause given a polarity would move u: the padding slot is really ignored.
        active = model.user_vectors(hist, t_padded, torch.tensor([[POSITIVE, POSITIVE, NEGATIVE]] * 3))
    # Not bit-exact: the experts' matmuls run on [B*3, d] instead of [B*2, d], and the BLAS kernel
    # may round a row differently for another row count (seen: 1.2e-7).
    torch.testing.assert_close(padded, plain, rtol=0, atol=1e-6)
    assert (active - plain).abs().max() > 1e-2


def _expert_grads(model: DPRModel, group: str) -> list[torch.Tensor | None]:
    return [p.grad for p in getattr(model.experts, group).parameters()]


def _backprop_clauses(model: DPRModel, polarity: int) -> None:
    model.train()
    hist = random_hist(6, 10, seed=8)
    t = torch.randn(6, 2, PROMPT_DIM)
    pol = torch.full((6, 2), polarity)
    pol[0, 1] = NO_CLAUSE
    u = model.user_vectors(hist, t, pol)
    model.item_table.score_all(u).logsumexp(-1).sum().backward()


@pytest.mark.parametrize("gate_floor", [0.0, 0.05])
@pytest.mark.parametrize("polarity,silent,active", [(NEGATIVE, "pos", "neg"), (POSITIVE, "neg", "pos")])
def test_hard_routing_isolates_the_polarity_groups(polarity, silent, active, gate_floor):
    model = model_for(routing="hard", dropout=0.1, fusion_gate_floor=gate_floor)
    _backprop_clauses(model, polarity)
    for grad in _expert_grads(model, silent):
        assert grad is None or torch.count_nonzero(grad) == 0
    for expert in getattr(model.experts, active):
        assert any(p.grad is not None and torch.count_nonzero(p.grad) > 0 for p in expert.parameters())
    assert torch.count_nonzero(model.experts.shared.mlp[0].weight.grad) > 0


@pytest.mark.parametrize("floor", [0.0, 0.05])
def test_gate_floor_keeps_gradient_flowing_to_the_experts_behind_a_closed_gate(floor):
    """A sigmoid gate at ~0 starves the experts of gradient (their delta is g * expert); the floor
    (ours) keeps g >= floor, so they can still learn."""
    model = model_for(routing="hard", fusion_gate_floor=floor)
    with torch.no_grad():
        model.fusion.linear.bias.fill_(-60.0)  # closed: sigmoid(-60) ~ 1e-26
        gate = model(random_hist(2, 6, seed=1), torch.randn(2, 1, PROMPT_DIM), torch.tensor([[NEGATIVE]] * 2)).gate
    assert float(gate.min()) >= floor
    _backprop_clauses(model, NEGATIVE)
    grad = float(model.experts.neg[0].mlp[-1].weight.grad.abs().max())
    assert grad > 1e-4 if floor else grad < 1e-20, grad
    with pytest.raises(ValueError, match="fusion_gate_floor must be in"):
        small_cfg(fusion_gate_floor=1.0)


def test_learned_routing_trains_both_groups():
    model = model_for(routing="learned")
    _backprop_clauses(model, NEGATIVE)
    for group in ("pos", "neg"):
        for expert in getattr(model.experts, group):
            assert torch.count_nonzero(expert.mlp[0].weight.grad) > 0


def test_hard_routing_refuses_unlabelled_clauses():
    model = model_for(routing="hard")
    with pytest.raises(ValueError, match="hard routing needs a polarity label"):
        model(random_hist(1, 5, seed=0), torch.randn(1, 1, PROMPT_DIM), torch.tensor([[UNLABELLED]]))


def test_hard_routing_uses_labels_as_group_weights():
    model = model_for(routing="hard")
    pol = torch.tensor([[POSITIVE, NEGATIVE, NO_CLAUSE]])
    with torch.no_grad():
        out = model(random_hist(1, 5, seed=0), torch.randn(1, 3, PROMPT_DIM), pol)
    assert torch.equal(out.group_probs[0], torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]))
    assert out.router_logits.shape == (1, 3, 2) and out.z.shape == (1, 3, 16)


def test_clause_polarity_shape_is_checked():
    model = model_for()
    with pytest.raises(ValueError, match=r"clause_polarity must have shape \(1, 2\), got \(1, 3\)"):
        model(random_hist(1, 5, seed=0), torch.randn(1, 2, PROMPT_DIM), torch.ones(1, 3, dtype=torch.long))


# ---------------------------------------------------------------- end to end

@pytest.mark.parametrize("backbone", ["sasrec", "gru4rec"])
def test_warmup_path_learns_a_successor_rule(backbone):
    """Item i is always followed by i + 1 (mod N): full-CE next-item training at every position,
    with row-wise Adagrad on the table and AdamW on the rest, must reach near-perfect accuracy
    where chance is 1/N."""
    from dpr_dist.losses import full_softmax_ce
    from dpr_dist.optim import RowWiseAdagrad

    torch.manual_seed(0)
    model = build_model(small_cfg(backbone=backbone, dropout=0.0, num_blocks=1), NUM_ITEMS).train()
    table_opt = RowWiseAdagrad(model.item_table.parameters(), lr=0.1)
    dense_opt = torch.optim.AdamW([p for n, p in model.named_parameters() if not n.startswith("item_table")], lr=1e-2)
    gen = torch.Generator().manual_seed(1)

    def batch(size: int) -> torch.Tensor:
        start = torch.randint(0, NUM_ITEMS, (size, 1), generator=gen)
        return (start + torch.arange(9)) % NUM_ITEMS + 1

    for _ in range(60):
        seq = batch(32)
        H = model.encode_history(seq[:, :-1]).H
        loss = full_softmax_ce(model.item_table, H, seq[:, 1:]).mean()
        table_opt.zero_grad()
        dense_opt.zero_grad()
        loss.backward()
        table_opt.step()
        dense_opt.step()
    model.eval()
    seq = batch(200)
    with torch.no_grad():
        scores = model.item_table.score_all(model.user_vectors(seq[:, :-1]))
    scores[:, 0] = float("-inf")
    accuracy = (scores.argmax(dim=1) == seq[:, -1]).float().mean().item()
    assert accuracy > 0.9
    assert torch.equal(model.item_table.embedding.weight[0], torch.zeros(16))


@pytest.mark.parametrize("sparse", [False, True])
def test_fixed_feature_columns_never_train(sparse):
    """ModelConfig.tag_features: the last k columns of the table hold given features and get no
    gradient from lookups or scoring; the other columns train."""
    from dpr_dist.optim import RowWiseAdagrad

    fixed = (torch.rand(NUM_ITEMS + 1, 3, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    fixed[0] = 0
    table = PlainItemTable(NUM_ITEMS, 16, sparse=sparse, fixed_columns=fixed)
    assert torch.equal(table.embedding.weight[:, -3:], fixed)
    before = table.embedding.weight.detach().clone()
    opt = RowWiseAdagrad(table.parameters(), lr=0.1)
    u = torch.randn(4, 16)
    for _ in range(3):
        opt.zero_grad()
        loss = table.lookup(torch.tensor([[1, 2, 3]])).pow(2).sum()
        if not sparse:  # scoring touches every row (dense gradient)
            loss = loss + table.score_all(u).logsumexp(-1).sum()
        loss.backward()
        opt.step()
    after = table.embedding.weight.detach()
    assert torch.equal(after[:, -3:], fixed)
    assert (after[1:4, :-3] - before[1:4, :-3]).abs().max() > 1e-3
    with pytest.raises(ValueError, match=r"fixed_columns must be \[41, k\] with 0 < k < dim=16"):
        PlainItemTable(NUM_ITEMS, 16, fixed_columns=torch.zeros(NUM_ITEMS + 1, 16))


@pytest.mark.parametrize("reads_tags", [False, True])
def test_experts_read_history_tags_only_when_asked(reads_tags):
    """ModelConfig.experts_read_history_tags: the history items' tag columns reach the experts'
    read (u changes when a history item's tags change) but never the backbone state h."""
    tags = (torch.rand(NUM_ITEMS + 1, 3, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    tags[0] = 0
    hist = random_hist(3, 8, seed=2, min_len=8)
    clause = torch.randn(3, 1, PROMPT_DIM, generator=torch.Generator().manual_seed(3))
    pol = torch.tensor([[POSITIVE], [NEGATIVE], [POSITIVE]])
    outs = []
    for flip in (False, True):
        changed = tags.clone()
        if flip:
            changed[hist[:, -2]] = 1 - changed[hist[:, -2]]  # retag one history item per row
            changed[0] = 0
        cfg = small_cfg(tag_features=True, experts_read_history_tags=reads_tags)
        model = build_model(cfg, NUM_ITEMS, seed=0, fixed_columns=changed).eval()  # same seed, same weights
        with torch.no_grad():
            outs.append(model(hist, clause, pol))
    assert torch.equal(outs[0].h, outs[1].h)
    assert torch.equal(outs[0].u, outs[1].u) != reads_tags
    if reads_tags:
        assert (outs[0].u - outs[1].u).abs().amax(dim=1).min() > 0  # every row read its own tags


def test_the_experts_tag_read_costs_no_second_table_lookup():
    """With experts_read_history_tags, one lookup of the history serves the backbone and the
    experts' read (on a sharded table every lookup is a collective)."""
    tags = (torch.rand(NUM_ITEMS + 1, 3, generator=torch.Generator().manual_seed(1)) < 0.5).float()
    tags[0] = 0
    model = build_model(small_cfg(tag_features=True, experts_read_history_tags=True), NUM_ITEMS, fixed_columns=tags)
    looked_up = []
    lookup = model.item_table.lookup
    model.item_table.lookup = lambda ids: looked_up.append(ids.shape) or lookup(ids)
    hist = random_hist(3, 8, seed=2)
    history = model.encode_history(hist)
    out = model.steer(history, torch.randn(3, 1, PROMPT_DIM), torch.tensor([[POSITIVE], [NEGATIVE], [POSITIVE]]))
    assert looked_up == [hist.shape]
    assert torch.equal(history.tags, tags[hist] * 1.0) and not torch.equal(out.u, out.h)


def test_experts_read_history_tags_needs_tag_columns():
    with pytest.raises(ValueError, match=r"ModelConfig.experts_read_history_tags needs tag_features"):
        small_cfg(experts_read_history_tags=True)
    # A hand-built model whose table has no tag columns is refused when it steers.
    model = model_for(tag_features=True, experts_read_history_tags=True)
    with pytest.raises(ValueError, match="experts_read_history_tags needs tag_features"):
        model(random_hist(2, 6, seed=0), torch.randn(2, 1, PROMPT_DIM), torch.tensor([[POSITIVE], [NEGATIVE]]))
