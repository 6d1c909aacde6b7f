"""Reading the JSON files of saved state (manifests, COMPLETE markers): a missing or unparsable file
raises the caller's error type naming the file, and the line for a syntax error, so every reader
reports bad input the same way."""

from __future__ import annotations

import json
from pathlib import Path


def read_json(path: str | Path, error: type[Exception], missing: str = "missing"):
    """The parsed content of ``path``; ``error("<path>: <missing>")`` when there is no such file,
    ``error("<path>:<line>: invalid JSON: ...")`` when it does not parse."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise error(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    except UnicodeDecodeError as exc:
        raise error(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
