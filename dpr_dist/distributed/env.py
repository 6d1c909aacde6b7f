"""Process-group set-up that fails fast, and rank helpers that also work in a plain process.

Launchers: ``deepspeed --num_accelerators N script.py`` (CPU), ``deepspeed --hostfile ...``
(multi-node) or ``torchrun``; all of them set RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT. A script started with plain ``python`` becomes a world of one on 127.0.0.1, so the same
code path (and TorchRec's DistributedModelParallel, which needs a process group) runs everywhere.

Timeout: gloo's default is 30 minutes, so a dead rank would leave the others waiting that long.
The timeout here comes from the config in MINUTES (default 5) and applies to every collective.

JIT builds: DeepSpeed compiles a shared-memory communication op on CPU (~65 s the first time,
cached under ``$TORCH_EXTENSIONS_DIR``). If one rank compiled it while another already waited in a
collective, the waiting rank could hit the (short) timeout. ``init_distributed`` therefore builds
(or loads from the cache) every JIT op *before* the rendezvous, which is itself covered by the same
timeout only once all ranks have finished building; pre-warm images with
``python -m dpr_dist.distributed.env --prebuild`` so no run pays the build. Our DeepSpeed config
uses ``torch_adam`` so no fused-Adam build is ever needed (see engine.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable, Iterator, NoReturn

import torch
import torch.distributed as dist

from dpr_dist.common.ports import free_port

DEFAULT_TIMEOUT_MINUTES = 5.0
BACKENDS = {"cpu": "gloo", "cuda": "nccl"}


class DistributedTimeoutError(RuntimeError):
    """A collective did not complete in time: a peer rank died or is stuck."""


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    timeout: timedelta


def backend_for(device: str) -> str:
    kind = torch.device(device).type
    if kind not in BACKENDS:
        raise ValueError(f"device {device!r}: distributed training supports {sorted(BACKENDS)} only")
    return BACKENDS[kind]


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    # Both launchers export LOCAL_RANK (DeepSpeed's also passes --local_rank, which scripts may ignore).
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return rank() == 0


def prebuild_jit_ops(device: str = "cpu") -> float:
    """Compile or load DeepSpeed's JIT ops for ``device``; returns seconds spent. No collective."""
    if torch.device(device).type != "cpu":
        return 0.0  # the CUDA path has no JIT op in our configuration (torch_adam, no fused kernels)
    started = time.time()
    from deepspeed.comm.torch import build_shm_op

    build_shm_op()
    return time.time() - started


def _become_world_of_one() -> None:
    os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def init_distributed(
    device: str = "cpu", timeout_minutes: float = DEFAULT_TIMEOUT_MINUTES, deepspeed_comm: bool = True
) -> DistInfo:
    """Join (or create) the default process group; idempotent. One group serves TorchRec and DeepSpeed.

    ``deepspeed_comm=False`` skips DeepSpeed (no JIT op, no deepspeed.comm): for processes that only
    use TorchRec, e.g. evaluation or the table tests."""
    if timeout_minutes <= 0:
        raise ValueError(f"timeout_minutes must be > 0, got {timeout_minutes}")
    backend = backend_for(device)
    timeout = timedelta(minutes=timeout_minutes)
    if not dist.is_initialized():
        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            _become_world_of_one()
        if backend == "nccl":
            torch.cuda.set_device(local_rank())
        if deepspeed_comm:
            prebuild_jit_ops(device)  # before the rendezvous: see the module docstring
            import deepspeed

            # DeepSpeed's wrapper also sets up deepspeed.comm, which deepspeed.initialize needs later.
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False, timeout=timeout, verbose=False)
            _unlink_deepspeed_shm_segment()
        else:
            dist.init_process_group(backend, timeout=timeout)
    return DistInfo(rank(), world_size(), local_rank(), dist.get_backend(), timeout)


def run_rank(main: Callable[[], int | None]) -> NoReturn:
    """Run a rank's ``main()`` and end the process without Python's interpreter finalization.

    Why: a gloo worker thread drops the last collective it ran (and the tensors that collective held)
    only after it has woken the caller. When the main thread has reached ``Py_Finalize`` by then, the
    worker's GIL acquire ends that thread inside a C++ destructor and ``std::terminate`` aborts the
    rank ("terminate called without an active exception", exit -6) AFTER a run that succeeded and
    wrote everything. ``destroy_process_group`` does not prevent it (TorchRec's modules keep the group
    alive). Seen in 10 of 114 two-rank launches of the test workers on a loaded 2-core machine, none
    in 100 since (core dump: the ``AsyncBarrierWork`` destructor in ``ProcessGroupGloo::runLoop``).
    ``os._exit`` skips the finalization; every file we write is closed and renamed into place before,
    so nothing is lost.

    On success the process group is destroyed first (the documented shutdown). On an error it is not:
    a peer may still wait in a collective, and the closed sockets make it fail fast instead.
    """
    try:
        code = main()
        if dist.is_initialized():
            dist.destroy_process_group()
    except SystemExit as exc:  # sys.exit() / argparse inside main
        code = exc.code
    except BaseException:  # noqa: BLE001 - printed here, as the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    if isinstance(code, str):  # SystemExit("message"): Python prints it and exits 1
        print(code, file=sys.stderr)
        code = 1
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(code or 0))


def _unlink_deepspeed_shm_segment() -> None:
    """DeepSpeed's CPU all-reduce op maps a 66 MB /dev/shm segment per rank and never unlinks it, so
    every run would leave its segments behind until /dev/shm (RAM) fills. Each rank maps its peers'
    segments inside init_distributed, before it returns; after a barrier every rank unlinks its own
    name, and the mappings stay valid until the processes exit (even after kill -9)."""
    # Every rank reaches the barrier, whatever its node has: a node-local early return would leave
    # the others waiting in it.
    barrier_or_fail("DeepSpeed's shared-memory set-up")
    if not os.path.isdir("/dev/shm"):
        return
    name = (f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_"
            f"{os.environ.get('MASTER_PORT', '')}_{rank()}")
    try:
        os.unlink(os.path.join("/dev/shm", name))
    except FileNotFoundError:
        pass  # the op is not built for this machine, or another naming: nothing of ours to remove


_RANK_IN_MESSAGE = re.compile(r"[Rr]anks?\s*[:=]?\s*\[?([\d,\s]+)\]?")


def _ranks_named_in(message: str) -> list[int]:
    found: set[int] = set()
    for match in _RANK_IN_MESSAGE.finditer(message):
        found.update(int(x) for x in re.findall(r"\d+", match.group(1)))
    return sorted(found - {rank()})


def barrier_or_fail(what: str, timeout_seconds: float | None = None) -> None:
    """A barrier that raises :class:`DistributedTimeoutError` naming the missing rank(s) instead of
    hanging. gloo: ``monitored_barrier`` (rank 0 learns which ranks did not arrive; other ranks
    only see rank 0). nccl has no monitored barrier: the error then names no rank."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    timeout = timedelta(seconds=timeout_seconds) if timeout_seconds else None
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timeout, wait_all_ranks=True)
        else:
            work = dist.barrier(async_op=True)
            work.wait(timeout) if timeout else work.wait()
    except RuntimeError as exc:  # DistBackendError is a RuntimeError
        raise _timeout_error(what, exc) from exc


@contextmanager
def collective_guard(what: str) -> Iterator[None]:
    """Turn a failed collective (the process-group timeout expired, or a peer's connection closed)
    into a :class:`DistributedTimeoutError` that says which step of the job was waiting."""
    try:
        yield
    except DistributedTimeoutError:
        raise
    except RuntimeError as exc:
        if not dist.is_initialized() or dist.get_world_size() == 1 or not _is_peer_failure(exc):
            raise  # an ordinary bug (shape, dtype...) keeps its own error
        raise _timeout_error(what, exc) from exc


_PEER_FAILURE = re.compile(r"timed? ?out|timeout|connection|closed|reset by peer|broken pipe|gloo|nccl", re.IGNORECASE)


def _is_peer_failure(exc: RuntimeError) -> bool:
    return isinstance(exc, dist.DistError) or bool(_PEER_FAILURE.search(str(exc)))


def _timeout_error(what: str, exc: BaseException) -> DistributedTimeoutError:
    missing = _ranks_named_in(str(exc))
    who = f"rank(s) {missing} did not arrive" if missing else "a peer rank did not arrive"
    return DistributedTimeoutError(
        f"rank {rank()} of {world_size()}: {what!r} failed: {who} (dead or stuck?). "
        f"Relaunch to resume from the last checkpoint. Backend said: {str(exc).strip().splitlines()[0]}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build DeepSpeed's JIT ops now (e.g. in an image build).")
    parser.add_argument("--prebuild", action="store_true", required=True)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    seconds = prebuild_jit_ops(args.device)
    print(f"JIT ops ready for {args.device} in {seconds:.1f} s "
          f"(cache: {os.environ.get('TORCH_EXTENSIONS_DIR', '~/.cache/torch_extensions')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
