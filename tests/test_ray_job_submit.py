"""`ray job submit` of the preparation job to a real local cluster started by scripts/ray_cluster.sh."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml

from data_pipeline.verify import verify_dataset
from dpr_dist.common.ports import free_port

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "ray_cluster.sh"


@pytest.fixture
def cluster(tmp_path):
    """A private cluster on fresh ports, so it cannot collide with (or stop) anyone else's."""
    temp = tempfile.mkdtemp(prefix="dprj_", dir="/tmp")  # short: Ray puts unix sockets in it
    ports = {name: free_port() for name in ("PORT", "DASHBOARD_PORT", "AGENT_PORT", "CLIENT_PORT")}
    env = {**os.environ, "DPR_RAY_TEMP": temp, **{f"DPR_RAY_{k}": str(v) for k, v in ports.items()},
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "VIRTUAL_ENV": str(Path(sys.executable).parents[1])}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    started = subprocess.run([str(SCRIPT), "start"], env=env, capture_output=True, text=True, timeout=180)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield env, f"http://127.0.0.1:{ports['DASHBOARD_PORT']}"
    finally:
        stopped = subprocess.run([str(SCRIPT), "stop"], env=env, capture_output=True, text=True, timeout=60)
        status = subprocess.run([str(SCRIPT), "status"], env=env, capture_output=True, text=True, timeout=60)
        shutil.rmtree(temp, ignore_errors=True)  # session logs; the cluster is gone by now
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert status.returncode == 1 and "not running" in status.stdout


@pytest.mark.slow  # 37 s on a quiet 2-CPU box, ~70 s when it is shared: cluster start + job + stop
def test_job_submit_prepares_a_verifiable_dataset(cluster, tmp_path):
    env, address = cluster
    config = yaml.safe_load((REPO / "configs" / "data" / "tiny-synthetic.yaml").read_text())
    out = tmp_path / "prepared"
    # Absolute paths: the job runs in an unpacked copy of the working directory.
    config["output_dir"] = str(out)
    config["source"]["synthetic"].update(num_users=40, num_items=80)
    config_path = tmp_path / "tiny.yaml"
    config_path.write_text(yaml.safe_dump(config))

    job = subprocess.run(
        ["ray", "job", "submit", "--address", address, "--working-dir", ".", "--",
         "python", "-m", "data_pipeline.prepare", "--config", str(config_path), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    log = job.stdout + job.stderr
    assert job.returncode == 0, log[-4000:]
    assert "succeeded" in log and "[prepare] wrote " + str(out) in log
    # The job attached to the submitted-to cluster rather than starting a private Ray.
    assert "Started a local Ray instance" not in log
    assert verify_dataset(out) == []
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["users"] == 40 and manifest["config"]["output_dir"] == str(out)
