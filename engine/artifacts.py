"""Atomic artifact writes: a reader sees the old file or the complete new one, never a part."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, write: Callable[[str], None]) -> str:
    """Run ``write(tmp)`` on a temp file next to ``path``, fsync it, then ``os.replace`` it.

    Readers see the old file or the new one, never a torn one; on any failure the temp file is
    removed and ``path`` is untouched. Returns the sha256 hex digest of what was written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        digest = hashlib.sha256()
        with open(tmp, "r+b") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX only)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes) -> str:
    """:func:`atomic_write` of an in-memory payload; returns the sha256 of ``data``."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            handle.write(data)

    return atomic_write(Path(path), write)


def write_json_atomic(path: Path, payload: object) -> str:
    """JSON (sorted keys, indented) written atomically; returns its sha256."""
    return write_bytes_atomic(path, json.dumps(payload, indent=2, sort_keys=True).encode())
