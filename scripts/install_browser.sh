#!/usr/bin/env bash
# Debian's Chromium for the web demo's end-to-end test (tests/test_serving_browser.py skips with a
# message without it). Needs root (CI runs as root); does nothing when chromium is already there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then exit 0; fi
if [ "$(id -u)" != 0 ]; then echo "[browser] not root: skipping the Chromium install"; exit 0; fi
echo "[browser] installing Debian's chromium (about a minute)"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
chromium --version
