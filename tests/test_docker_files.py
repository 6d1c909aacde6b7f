"""docker/: the images cannot be built here (no Docker engine), so check what can be checked: the
files parse, and every pinned version agrees with requirements.lock and pyproject.toml."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
INSTRUCTIONS = {"FROM", "ARG", "ENV", "RUN", "COPY", "ADD", "WORKDIR", "CMD", "ENTRYPOINT", "LABEL", "USER",
                "EXPOSE", "VOLUME", "SHELL", "HEALTHCHECK", "STOPSIGNAL", "ONBUILD"}
PIN = re.compile(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([0-9][A-Za-z0-9.+!-]*)")
# The CUDA image swaps exactly these lock entries (docker/Dockerfile.cuda header).
CUDA_SWAPS = {"fbgemm-gpu": "fbgemm-gpu-cpu"}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.strip().split("==")
            pins[canonical(name)] = version
    return pins


def dockerfile_instructions(path: Path) -> list[tuple[int, str, str]]:
    """(line number, instruction, arguments) of each logical line (backslash continuations joined)."""
    out, buffer, start = [], "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not buffer and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if not buffer:
            start = number
        buffer += line.rstrip().removesuffix("\\") + " "
        if not line.rstrip().endswith("\\"):
            keyword, _, args = buffer.strip().partition(" ")
            out.append((start, keyword, args))
            buffer = ""
    assert not buffer, f"{path}: ends inside a continued line"
    return out


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_parses(name):
    path = DOCKER / name
    instructions = dockerfile_instructions(path)
    for number, keyword, _ in instructions:
        assert keyword in INSTRUCTIONS, f"{path}:{number}: unknown instruction {keyword!r}"
    assert [k for _, k, _ in instructions if k != "ARG"][0] == "FROM", f"{path}: the first instruction must be FROM"


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfile_pins_agree_with_the_lock(name):
    path = DOCKER / name
    lock = lock_pins()
    for number, keyword, args in dockerfile_instructions(path):
        if keyword != "RUN":
            continue
        for pkg, version in PIN.findall(args):
            locked_as = CUDA_SWAPS.get(canonical(pkg), canonical(pkg)) if name.endswith("cuda") else canonical(pkg)
            assert locked_as in lock, f"{path}:{number}: {pkg} is pinned but not in requirements.lock"
            assert version == lock[locked_as], f"{path}:{number}: {pkg}=={version} but requirements.lock has {lock[locked_as]}"


def test_dockerfiles_install_the_lock_without_resolving():
    cpu = " ".join(a for _, k, a in dockerfile_instructions(DOCKER / "Dockerfile.cpu") if k == "RUN")
    assert "pip install --no-deps -r requirements.lock" in cpu
    assert "--index-url https://download.pytorch.org/whl/cpu" in cpu
    cuda = " ".join(a for _, k, a in dockerfile_instructions(DOCKER / "Dockerfile.cuda") if k == "RUN")
    # the two swapped pins are filtered out of the lock, everything else is installed --no-deps
    assert 'grep -v -e "^torch==" -e "^fbgemm_gpu-cpu==" requirements.lock' in cuda
    assert "pip install --no-deps -r /tmp/requirements.cuda.lock" in cuda


def test_python_version_agrees_with_pyproject():
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == ">=3.11,<3.12"
    assert (DOCKER / "Dockerfile.cpu").read_text().count("FROM python:3.11-slim") == 1
    assert "python3.11 -m venv" in (DOCKER / "Dockerfile.cuda").read_text()


def test_pyproject_pins_agree_with_the_lock():
    lock = lock_pins()
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    deps = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    for dep in deps:
        match = PIN.fullmatch(re.sub(r"\[.*?\]", "", dep))
        if match:
            assert lock[canonical(match.group(1))] == match.group(2), f"pyproject.toml pins {dep}, lock has {lock[canonical(match.group(1))]}"


def test_ray_cluster_config():
    config = yaml.safe_load((DOCKER / "ray-cluster.yaml").read_text())
    assert config["provider"]["type"] == "local"
    assert config["min_workers"] == config["max_workers"] == len(config["provider"]["worker_ips"])
    assert config["docker"]["image"] == "dpr-dist:cpu"
    assert any("ray start --head" in c for c in config["head_start_ray_commands"])
    # the one-machine workarounds of scripts/ray_cluster.sh must not leak into a real cluster
    text = (DOCKER / "ray-cluster.yaml").read_text()
    assert "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER" not in text and "RAY_AUTH_MODE" not in text


def test_hostfile_example():
    lines = [line for line in (DOCKER / "hostfile.example").read_text().splitlines() if line and not line.startswith("#")]
    assert len(lines) >= 2
    for line in lines:
        assert re.fullmatch(r"[A-Za-z0-9.-]+ slots=[1-9][0-9]*", line), f"hostfile.example: bad line {line!r}"


def test_readme_walks_from_laptop_to_cluster():
    text = (DOCKER / "README.md").read_text()
    for command in ("ray job submit", "ray up docker/ray-cluster.yaml", "deepspeed --hostfile docker/hostfile.example",
                    "docker build -f docker/Dockerfile.cpu", "--num_accelerators 2"):
        assert command in text, f"docker/README.md does not show `{command}`"
