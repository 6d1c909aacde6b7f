"""`deepspeed --num_accelerators 2` runs the DeepSpeed engine (dense part) + the sharded item table;
both ranks must agree and match a single-process torch reference. A dead or stuck rank must make
rank 0 fail within the configured timeout with an error that names the missing rank.

Tolerance 1e-6: float32, identical inputs; only the order of gradient sums differs (see
test_distributed_table.py); measured ~5e-8. Clipping is active (reference gradient norms > 0.05).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from dist_workers import runner

TOL = 1e-6
TIMEOUT_MINUTES = 0.5  # the worker's process-group timeout (30 s)
SLACK_SECONDS = 30     # start-up of the ranks under a loaded 2-core machine


def launch(out: Path, args: list[str], check: bool = True):
    return runner.run(runner.deepspeed_cmd("engine_worker.py", ["--out", str(out), *args], 2), timeout=300, check=check)


def results(out: Path) -> list[dict]:
    return [json.loads((out / f"result_r{rank}.json").read_text()) for rank in range(2)]


# ZeRO 0 (and 1, 2 again) runs in the full-stage parity matrix of test_distributed_training.py.
@pytest.mark.parametrize("zero", [2, pytest.param(3, marks=pytest.mark.slow)])
def test_deepspeed_launch_ranks_agree_and_match_reference(tmp_path, zero):
    cmd = runner.deepspeed_cmd("engine_worker.py", ["--out", str(tmp_path), "--zero", str(zero)], 2)
    port = cmd[cmd.index("--master_port") + 1]
    runner.run(cmd, timeout=300)
    # DeepSpeed's CPU all-reduce segments (66 MB each) are unlinked, not left to fill /dev/shm.
    assert not list(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))
    rank0, rank1 = results(tmp_path)
    assert rank0["dense_digest"] == rank1["dense_digest"]
    assert rank0["table_digest"] == rank1["table_digest"]
    assert rank0["losses"] != rank1["losses"]  # each rank trained on its own slice
    for r in (rank0, rank1):
        assert r["dense_err"] < TOL and r["table_err"] < TOL
        assert r["gradient_clipping"] == 0.05 and min(r["reference_grad_norms"]) > 0.05  # clipping was active
        assert r["projection_unchanged"]  # a group the stage does not train stays out of the engine


@pytest.mark.parametrize("fail,what", [("exit", "model set-up"), pytest.param("hang", "model set-up", marks=pytest.mark.slow),
                                       pytest.param("hang-in-step", "training step 1", marks=pytest.mark.slow)])
def test_dead_or_stuck_rank_fails_fast(tmp_path, fail, what):
    started = time.time()
    proc = launch(tmp_path, ["--fail", fail, "--timeout-minutes", str(TIMEOUT_MINUTES)], check=False)
    elapsed = time.time() - started
    assert proc.returncode != 0
    error = json.loads((tmp_path / "error_r0.json").read_text())
    assert error["type"] == "DistributedTimeoutError"
    assert error["message"].startswith(f"rank 0 of 2: '{what}' failed:")
    if fail != "hang-in-step":  # the monitored barrier knows who is missing
        assert "rank(s) [1] did not arrive" in error["message"]
    assert error["seconds"] < TIMEOUT_MINUTES * 60 + SLACK_SECONDS
    assert elapsed < 3 * TIMEOUT_MINUTES * 60 + 2 * SLACK_SECONDS  # the launcher ends the stuck rank too


# ---- single-process pieces -----------------------------------------------------------------------
def test_deepspeed_config_from_stage():
    from dpr_dist.distributed.engine import deepspeed_config
    from dpr_dist.training.config import StageConfig

    stage = StageConfig(batch_size=128, lr=3e-4, weight_decay=0.01, grad_clip=0.0)
    config = deepspeed_config(stage, world_size=2, zero_stage=1)
    assert config["train_micro_batch_size_per_gpu"] == 64 and config["gradient_accumulation_steps"] == 1
    assert config["gradient_clipping"] == 0.0  # explicit "off", not DeepSpeed's default 1.0
    assert config["optimizer"] == {"type": "AdamW", "params": {"lr": 3e-4, "weight_decay": 0.01, "betas": [0.9, 0.999],
                                                                "eps": 1e-8, "torch_adam": True}}
    assert config["zero_optimization"] == {"stage": 1}
    with pytest.raises(ValueError, match="the fused item-table update runs at every micro-batch"):
        deepspeed_config(stage, world_size=2, gradient_accumulation_steps=2)
    allowed = deepspeed_config(stage, world_size=2, gradient_accumulation_steps=2, allow_accumulation=True)
    assert allowed["train_micro_batch_size_per_gpu"] == 32
    with pytest.raises(ValueError, match="batch_size 128 .global. is not divisible by world_size 3"):
        deepspeed_config(stage, world_size=3)
    with pytest.raises(ValueError, match="zero_stage 4"):
        deepspeed_config(stage, world_size=1, zero_stage=4)


def test_backend_and_missing_rank_parsing():
    from dpr_dist.distributed import env

    assert env.backend_for("cpu") == "gloo" and env.backend_for("cuda:1") == "nccl"
    with pytest.raises(ValueError, match="device 'mps'"):
        env.backend_for("mps")
    assert env._ranks_named_in("[Rank 0]: Ranks 1, 3 failed to pass monitoredBarrier in 30000 ms") == [1, 3]
    assert env._ranks_named_in("Connection closed by peer [10.0.0.2]:1234") == []


def test_collective_guard_leaves_ordinary_errors_alone(monkeypatch):
    from dpr_dist.distributed import env

    monkeypatch.setattr(env.dist, "is_initialized", lambda: True)  # pretend: a world of 2
    monkeypatch.setattr(env.dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(env.dist, "get_rank", lambda: 0)
    with pytest.raises(RuntimeError, match="mat1 and mat2 shapes cannot be multiplied"):
        with env.collective_guard("training step 3"):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")
    with pytest.raises(env.DistributedTimeoutError, match=r"^rank 0 of 2: 'training step 3' failed: a peer rank did not arrive"):
        with env.collective_guard("training step 3"):
            raise RuntimeError("[gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242")
