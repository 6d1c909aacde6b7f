"""Start and stop a headless Chromium with a DevTools endpoint; nothing is installed here."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--remote-allow-origins=*",
)


def find_chromium() -> str | None:
    return next((path for name in CANDIDATES if (path := shutil.which(name))), None)


class HeadlessChromium:
    """``with HeadlessChromium(binary, profile_dir, url) as browser: browser.page_ws_url``.

    ``--remote-debugging-port=0`` lets Chromium pick a free port; it writes the port to
    ``DevToolsActivePort`` in the (fresh) profile directory.
    """

    def __init__(self, binary: str, profile_dir: Path, url: str, timeout: float = 60.0) -> None:
        self.binary, self.profile_dir, self.url, self.timeout = binary, Path(profile_dir), url, timeout
        self.process: subprocess.Popen | None = None
        self.log = self.profile_dir.parent / "chromium.log"

    def __enter__(self) -> "HeadlessChromium":
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [self.binary, *FLAGS, "--remote-debugging-port=0", f"--user-data-dir={self.profile_dir}", self.url],
                stdout=log, stderr=subprocess.STDOUT,
            )
        self.port = self._wait_for_port()
        self.page_ws_url = self._page_ws_url()
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)

    def _deadline_passed(self, start: float, what: str) -> None:
        if self.process.poll() is not None:
            raise RuntimeError(f"chromium exited with {self.process.returncode} while {what}; see {self.log}")
        if time.monotonic() - start > self.timeout:
            raise TimeoutError(f"chromium: timed out after {self.timeout} s {what}; see {self.log}")
        time.sleep(0.1)

    def _wait_for_port(self) -> int:
        marker, start = self.profile_dir / "DevToolsActivePort", time.monotonic()
        while True:
            lines = marker.read_text().splitlines() if marker.exists() else []
            if lines and lines[0].strip().isdigit():
                return int(lines[0])
            self._deadline_passed(start, "waiting for DevToolsActivePort")

    def _page_ws_url(self) -> str:
        start = time.monotonic()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as resp:
                    targets = json.load(resp)
            except OSError:
                targets = []
            pages = [t for t in targets if t.get("type") == "page" and t.get("url", "").startswith(self.url)]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            self._deadline_passed(start, f"waiting for a page at {self.url}")
