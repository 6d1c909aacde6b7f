#!/usr/bin/env bash
# Creates the project-local virtualenv .venv from requirements.lock (every package pinned, installed
# with --no-deps so nothing is resolved at install time: a resolved torchrec would pull the CUDA
# fbgemm-gpu over the CPU one). Idempotent: does nothing when the lock has not changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
stamp=$VENV/.lock.sha256
want=$(sha256sum requirements.lock | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi
echo "[setup] creating $VENV from requirements.lock (about 2 minutes, 2.2 GB)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade "pip>=24"
# torch first and alone: pinned, so pip takes the CPU wheel (a range would fetch a CUDA build).
"$VENV/bin/python" -m pip install --quiet --no-deps "torch==2.13.0"
"$VENV/bin/python" -m pip install --quiet --no-deps -r requirements.lock
"$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import torch, torchrec, deepspeed, ray, webdataset, pyarrow  # noqa: F401  fail fast on a broken stack
assert torch.__version__.startswith("2.13.0"), torch.__version__
print(f"[setup] ok: torch {torch.__version__}, torchrec {torchrec.__version__}, deepspeed {deepspeed.__version__}, ray {ray.__version__}")
PY
echo "$want" > "$stamp"
