"""`env.run_rank` ends a rank with os._exit (no interpreter finalization, where a gloo worker thread
could abort a finished run): the exit code must still be main's, buffered output must not be lost,
and the process group is destroyed on success only. Each case is a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from dist_workers.runner import REPO, worker_env

SCRIPT = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from dpr_dist.distributed import env

    real_destroy = dist.destroy_process_group

    def destroy_and_say_so(*args, **kwargs):
        real_destroy(*args, **kwargs)
        print("[process group destroyed]", end="")

    dist.destroy_process_group = destroy_and_say_so

    def main():
        env.init_distributed("cpu", timeout_minutes=1, deepspeed_comm=False)  # a gloo world of one
        print("trained", end="")  # no newline and a pipe: stays in the buffer unless flushed
        case = sys.argv[1]
        if case == "raise":
            raise ValueError("boom")
        if case == "exit-message":
            sys.exit("bad config")
        if case == "exit-2":
            sys.exit(2)
        return int(case)

    env.run_rank(main)
    print("never reached")
""")


def run_case(case: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in worker_env().items() if k != "PYTHONUNBUFFERED"}  # block-buffered, as under a launcher
    return subprocess.run([sys.executable, "-c", SCRIPT, case], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("code", [0, 3])
def test_returned_code_is_the_exit_code_and_output_is_flushed(code):
    proc = run_case(str(code))
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "trained[process group destroyed]"


@pytest.mark.parametrize("case, code, message", [
    ("raise", 1, "ValueError: boom"),
    ("exit-message", 1, "bad config"),
    ("exit-2", 2, None),
])
def test_errors_exit_non_zero_and_leave_the_group_alone(case, code, message):
    proc = run_case(case)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == "trained"  # flushed, and no destroy: a peer may still wait in a collective
    if message:
        assert message in proc.stderr
    if case == "raise":
        assert "Traceback (most recent call last)" in proc.stderr
