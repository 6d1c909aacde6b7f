"""Fetching a data archive by URL (http, https or file), atomically and checksum-verified."""

from __future__ import annotations

import hashlib
import urllib.parse
import urllib.request
from pathlib import Path

from dpr_dist.common.atomic import atomic_path, sha256_file

_SCHEMES = ("http", "https", "file")
_CHUNK = 1 << 20


class ChecksumError(ValueError):
    """The downloaded bytes do not have the expected sha256."""


def fetch(url: str, sha256: str | None, dest_dir: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` into ``dest_dir`` under its own file name and return that path.

    Skipped when the file is already there with the expected checksum (or any content when
    ``sha256`` is None). The bytes go to a temporary name and are renamed only once the checksum
    holds, so a failed or wrong download never leaves a file under the final name.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in _SCHEMES:
        raise ValueError(f"{url}: unsupported URL scheme {parsed.scheme!r}; use one of {_SCHEMES}")
    name = Path(urllib.parse.unquote(parsed.path)).name
    if not name:
        raise ValueError(f"{url}: the URL names no file")
    dest = Path(dest_dir) / name
    expected = sha256.lower() if sha256 else None
    if dest.is_file() and (expected is None or sha256_file(dest) == expected):
        return dest
    with atomic_path(dest) as tmp:
        actual = _copy_url(url, tmp, timeout)
        if expected is not None and actual != expected:
            raise ChecksumError(
                f"{url}: sha256 mismatch: expected {expected}, got {actual}; the download was removed"
            )
    return dest


def _copy_url(url: str, target: Path, timeout: float) -> str:
    """Stream ``url`` into ``target``; return the sha256 of what was written."""
    digest = hashlib.sha256()
    with urllib.request.urlopen(url, timeout=timeout) as response, open(target, "wb") as out:
        while block := response.read(_CHUNK):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()
