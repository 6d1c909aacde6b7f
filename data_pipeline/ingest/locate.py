"""Finding input files inside a directory, a zip archive or beside a given file.

Every reader goes through :class:`SourceFile`, so a file on disk, a gzip-compressed file and a zip
member are read the same way and named the same way in error messages.
"""

from __future__ import annotations

import gzip
import zipfile
from dataclasses import dataclass
from pathlib import Path


class MissingSourceError(FileNotFoundError):
    """A file a format needs is absent; the message names where we looked and the format."""


@dataclass(frozen=True)
class SourceFile:
    """One readable input: ``path`` on disk, or ``member`` inside the zip at ``path``."""

    path: Path
    member: str | None = None

    @property
    def display(self) -> str:
        """How errors name this file: ``archive.zip/member`` for zip members."""
        return f"{self.path}/{self.member}" if self.member else str(self.path)

    @property
    def name(self) -> str:
        return Path(self.member).name if self.member else self.path.name

    def read_bytes(self) -> bytes:
        """The file's content, gunzipped when its name ends in ``.gz``."""
        if self.member is None:
            data = self.path.read_bytes()
        else:
            with zipfile.ZipFile(self.path) as archive:
                data = archive.read(self.member)
        return gzip.decompress(data) if self.name.endswith(".gz") else data


def is_zip(path: Path) -> bool:
    return path.is_file() and zipfile.is_zipfile(path)


def find_file(root: Path, names: tuple[str, ...], fmt: str, required: bool = True) -> SourceFile | None:
    """The first of ``names`` (each also tried with ``.gz``) in directory or zip ``root``.

    In a zip, a member matches by its base name at any depth (``ml-1m/ratings.dat``), preferring
    the shallowest, so both the official archives and flat zips work.
    """
    candidates = [n for name in names for n in (name, name + ".gz")]
    found = _find_in_zip(root, candidates) if is_zip(root) else _find_in_dir(root, candidates)
    if found is None and required:
        raise MissingSourceError(
            f"{root}: no {' or '.join(candidates)} found; format {fmt!r} expects "
            f"{'a zip' if is_zip(root) else 'a directory or zip'} holding {names[0]}"
        )
    return found


def require_path(path: Path, fmt: str, what: str) -> Path:
    if not path.exists():
        raise MissingSourceError(f"{path}: not found; format {fmt!r} expects {what}")
    return path


def _find_in_dir(root: Path, candidates: list[str]) -> SourceFile | None:
    for name in candidates:
        if (root / name).is_file():
            return SourceFile(root / name)
    return None


def _find_in_zip(root: Path, candidates: list[str]) -> SourceFile | None:
    with zipfile.ZipFile(root) as archive:
        members = sorted(archive.namelist(), key=lambda m: (m.count("/"), m))
    for name in candidates:
        for member in members:
            if member.rsplit("/", 1)[-1] == name:
                return SourceFile(root, member)
    return None
