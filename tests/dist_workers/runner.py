"""Launch a worker script on N local ranks (torchrun or the deepspeed launcher) on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from dpr_dist.common.ports import free_port

REPO = Path(__file__).resolve().parents[2]
WORKERS = Path(__file__).resolve().parent


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    # A rank that dies of a signal (SIGSEGV, SIGABRT) prints every thread's Python stack: without
    # it a CI log shows only an exit code, as the gloo shutdown abort of stop 16 did.
    env["PYTHONFAULTHANDLER"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(WORKERS), env.get("PYTHONPATH", "")])
    env.setdefault("TORCH_EXTENSIONS_DIR", str(REPO / ".cache" / "torch_extensions"))
    return env


def torchrun_cmd(script: str, args: list[str], nproc: int) -> list[str]:
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), str(WORKERS / script), *args,
    ]


def deepspeed_cmd(script: str, args: list[str], nproc: int) -> list[str]:
    launcher = Path(sys.executable).with_name("deepspeed")
    return [
        str(launcher), "--num_accelerators", str(nproc), "--master_addr", "127.0.0.1",
        "--master_port", str(free_port()), str(WORKERS / script), *args,
    ]


TRAIN_SCRIPT = REPO / "launch" / "train.py"


def train_args(config: Path, out: Path, data: Path, sets: list[str]) -> list[str]:
    return ["--config", str(config), "--set", f"data_dir={data}", "--set", f"out_dir={out}",
            *sum((["--set", s] for s in sets), [])]


def deepspeed_train_cmd(args: list[str], nproc: int, port: int | None = None) -> list[str]:
    launcher = Path(sys.executable).with_name("deepspeed")
    return [str(launcher), "--num_accelerators", str(nproc), "--master_addr", "127.0.0.1",
            "--master_port", str(port or free_port()), str(TRAIN_SCRIPT), *args]


def torchrun_train_cmd(args: list[str], nproc: int, nnodes: int = 1, node_rank: int = 0, port: int | None = None,
                       addr: str = "127.0.0.1") -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(nproc), "--master_addr", addr, "--master_port", str(port or free_port()),
            str(TRAIN_SCRIPT), *args]


def start(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """A launcher in its own process group (so a test can kill -9 it with all its ranks)."""
    fh = open(log, "w")
    return subprocess.Popen(cmd, env={**worker_env(), **(env or {})}, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a launcher and every process below it (torchrun starts its ranks in sessions of their
    own, so killing the launcher's process group would leave them running)."""
    import psutil

    try:
        parent = psutil.Process(proc.pid)
        victims = parent.children(recursive=True) + [parent]
    except psutil.NoSuchProcess:
        return
    for victim in victims:
        try:
            victim.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait()


def run(cmd: list[str], timeout: float, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=worker_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc
