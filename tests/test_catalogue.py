"""The chunked catalogue log-sum-exp (dpr_dist.modules.catalogue) against autograd on the full score
matrix: values and gradients, in several chunks, with scores kept or re-computed in backward."""

from __future__ import annotations

import pytest
import torch

from dpr_dist.modules import catalogue


@pytest.mark.parametrize("keep_scores", [True, False])
@pytest.mark.parametrize("row_start", [0, 5])
@pytest.mark.parametrize("with_tags", [True, False])
@pytest.mark.parametrize("chunk_rows", [1, 4])  # 1 with row_start 0: a chunk of only the padding row
def test_block_logsumexp_matches_autograd_on_the_full_matrix(monkeypatch, keep_scores, row_start, with_tags, chunk_rows):
    monkeypatch.setattr(catalogue, "KEEP_SCORES_LIMIT", 1 << 28 if keep_scores else 0)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    rows = torch.randn(23, 5, dtype=torch.float64, generator=g, requires_grad=True)
    tags = torch.rand(23, 3, generator=g) < 0.4
    tag_ids = torch.tensor([0, 1, 2, -1, 0, 1, 2])
    all_tags, all_tag_ids = tags, tag_ids
    weights = torch.randn(3, 7, dtype=torch.float64, generator=g)

    def finite(x):
        return torch.where(torch.isfinite(x), x, torch.zeros_like(x))

    if not with_tags:  # the warm-up's form, computed in place: only the ALL row
        tags, tag_ids, weights = None, None, weights[:1]

    out = catalogue.block_logsumexp(q, rows, row_start, tags, tag_ids, chunk_rows=chunk_rows)
    got = torch.autograd.grad((finite(out) * weights).sum(), (q, rows))

    scores = q @ rows.T
    if row_start == 0:  # the padding item
        scores = torch.cat([torch.full_like(scores[:, :1], float("-inf")), scores[:, 1:]], dim=1)
    tagged = all_tags[:, all_tag_ids.clamp(min=0)].T & (all_tag_ids >= 0).unsqueeze(1)
    ref = torch.stack([scores.logsumexp(1), scores.masked_fill(~tagged, float("-inf")).logsumexp(1),
                       scores.masked_fill(tagged, float("-inf")).logsumexp(1)])[: out.shape[0]]
    want = torch.autograd.grad((finite(ref) * weights).sum(), (q, rows))
    assert torch.equal(torch.isinf(out), torch.isinf(ref))  # row 3 has no tag: TAGGED is -inf
    assert all(torch.isfinite(grad).all() for grad in got)
    torch.testing.assert_close(finite(out), finite(ref), rtol=0, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_stack_logsumexp_of_empty_sets_is_minus_inf_with_zero_gradient():
    a = torch.tensor([1.0, float("-inf")], requires_grad=True)
    b = torch.tensor([2.0, float("-inf")], requires_grad=True)
    out = catalogue.stack_logsumexp([a, b])
    assert out[1] == float("-inf")
    assert out[0].item() == pytest.approx(torch.logsumexp(torch.tensor([1.0, 2.0]), 0).item())
    out[0].backward()
    assert torch.isfinite(a.grad).all() and a.grad[1] == 0 and b.grad[1] == 0


def test_a_second_backward_through_the_in_place_normaliser_fails_loudly():
    # Backward turns the kept exp-scores into the gradient in place: a retained graph must not be
    # differentiated again with those (now altered) values.
    q = torch.randn(4, 3, requires_grad=True)
    rows = torch.randn(6, 3, requires_grad=True)
    out = catalogue.block_logsumexp(q, rows, 0).sum()
    out.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.backward()
