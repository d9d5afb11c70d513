"""Atomic artifact writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """Temp file in the same directory, fsync, rename; returns the sha256 of ``data``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256_bytes(data)


def write_json_atomic(path: Path, payload: object) -> str:
    """JSON (sorted keys, indented) written atomically; returns its sha256."""
    return write_bytes_atomic(path, json.dumps(payload, indent=2, sort_keys=True).encode())
