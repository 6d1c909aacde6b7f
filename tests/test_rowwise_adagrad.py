"""RowWiseAdagrad against an independent numpy computation and against FBGEMM's own CPU kernel."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpr_dist.optim import RowWiseAdagrad

ROWS, DIM = 6, 4
LR, EPS = 0.1, 1e-8
# Rows with a gradient at each of the three steps; row 4 is never touched, row 0 only once.
STEP_ROWS = [[0, 1, 1, 3], [1, 2, 5], [3, 5, 5, 2]]


def np_rowwise_adagrad(w, grads, lr, eps, decay=0.0, mode="l2"):
    """Straight from the formula, in float64, one row at a time."""
    w = w.astype(np.float64).copy()
    state = np.zeros(w.shape[0])
    for g in grads:
        for r in range(w.shape[0]):
            if not np.any(g[r]):
                continue
            g_eff = g[r] + decay * w[r] if mode == "l2" else g[r]
            state[r] += np.mean(g_eff**2)
            step = lr / (np.sqrt(state[r]) + eps)
            w[r] = (1 - lr * decay) * w[r] - step * g[r] if mode == "decoupled" else w[r] - step * g_eff
    return w, state


def make_problem(seed=0):
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(ROWS, DIM, generator=gen)
    # The gradient of sum(out * upstream) for out = w[ids]: duplicate ids add up.
    upstream = [torch.randn(len(ids), DIM, generator=gen) for ids in STEP_ROWS]
    return w0, upstream


def run_torch(w0, upstream, sparse, **kw):
    table = torch.nn.Embedding(ROWS, DIM, sparse=sparse)
    with torch.no_grad():
        table.weight.copy_(w0)
    opt = RowWiseAdagrad(table.parameters(), lr=LR, eps=EPS, **kw)
    grads = []
    for ids, up in zip(STEP_ROWS, upstream):
        opt.zero_grad()
        (table(torch.tensor(ids)) * up).sum().backward()
        grad = table.weight.grad
        grads.append((grad.to_dense() if grad.is_sparse else grad).numpy().copy())
        opt.step()
    return table.weight.detach(), opt.state[table.weight]["sum"], grads


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("decay,mode", [(0.0, "l2"), (0.05, "l2"), (0.05, "decoupled")])
def test_matches_numpy_over_three_steps(sparse, decay, mode):
    w0, upstream = make_problem()
    weight, state, grads = run_torch(w0, upstream, sparse, weight_decay=decay, weight_decay_mode=mode)
    w_ref, state_ref = np_rowwise_adagrad(w0.numpy(), grads, LR, EPS, decay, mode)
    np.testing.assert_allclose(weight.numpy(), w_ref, rtol=0, atol=2e-6)
    np.testing.assert_allclose(state.numpy(), state_ref, rtol=1e-5, atol=0)
    # The untouched row keeps its weight bit-exactly and its state at zero, even with weight decay.
    assert torch.equal(weight[4], w0[4]) and state[4].item() == 0.0


def test_dense_and_sparse_gradients_give_identical_bytes():
    w0, upstream = make_problem(seed=1)
    dense, dense_state, _ = run_torch(w0, upstream, sparse=False)
    sparse, sparse_state, _ = run_torch(w0, upstream, sparse=True)
    assert dense.numpy().tobytes() == sparse.numpy().tobytes()
    assert dense_state.numpy().tobytes() == sparse_state.numpy().tobytes()


def test_rejects_non_matrix_parameters_and_bad_arguments():
    bias = torch.nn.Parameter(torch.zeros(3))
    bias.grad = torch.ones(3)
    with pytest.raises(ValueError, match=r"2-D embedding tables only, got shape \(3,\)"):
        RowWiseAdagrad([bias], lr=0.1).step()
    with pytest.raises(ValueError, match="weight_decay_mode 'l1'; allowed: l2, decoupled"):
        RowWiseAdagrad([bias], lr=0.1, weight_decay_mode="l1")


def _fbgemm():
    try:
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen, WeightDecayMode,
        )
    except Exception as exc:  # noqa: BLE001 - any import failure means "no usable FBGEMM here"
        pytest.skip(f"fbgemm_gpu (CPU) not importable, cannot compare with its kernel: {exc}")
    return EmbOptimType, EmbeddingLocation, PoolingMode, ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen, WeightDecayMode


def run_fbgemm(w0, upstream, decay=0.0, mode="l2"):
    OptimType, Location, Pooling, Device, TBE, WDMode = _fbgemm()
    fbgemm_mode = {"l2": WDMode.L2, "decoupled": WDMode.DECOUPLE}[mode]
    tbe = TBE([(ROWS, DIM, Location.HOST, Device.CPU)], optimizer=OptimType.EXACT_ROWWISE_ADAGRAD,
              learning_rate=LR, eps=EPS, weight_decay=decay, weight_decay_mode=fbgemm_mode,
              pooling_mode=Pooling.SUM)
    with torch.no_grad():
        tbe.split_embedding_weights()[0].copy_(w0)
    for ids, up in zip(STEP_ROWS, upstream):
        # One bag per id, so each pooled output is the looked-up row and the gradients agree.
        tbe(torch.tensor(ids), torch.arange(len(ids) + 1)).backward(up)
    return tbe.split_embedding_weights()[0].detach(), tbe.split_optimizer_states()[0][0]


def test_matches_fbgemm_exact_rowwise_adagrad_cpu_kernel():
    w0, upstream = make_problem(seed=2)
    fb_weight, fb_state = run_fbgemm(w0, upstream)
    weight, state, _ = run_torch(w0, upstream, sparse=False)
    torch.testing.assert_close(weight, fb_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(state, fb_state, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_fbgemm_cpu_kernel_ignores_weight_decay(mode):
    """Canary for parity with the distributed path: the pinned fbgemm-gpu-cpu 1.8.0 CPU kernel
    leaves weight decay out (its GPU kernel and our optimizer apply it), so the item table must
    train with weight_decay=0 for the two paths to agree. If this starts failing, FBGEMM applies
    it now and the weight-decay cases above must agree with it too."""
    w0, upstream = make_problem(seed=2)
    decayed, _ = run_fbgemm(w0, upstream, decay=0.05, mode=mode)
    plain, _ = run_fbgemm(w0, upstream)
    assert torch.equal(decayed, plain)
