"""sha256 digests, written ``sha256:<hex>`` everywhere (manifests, lockfile, cache paths, APIs)."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    """Digest of ``data``.

    Example:
        >>> sha256_bytes(b"")[:15]
        'sha256:e3b0c442'
    """
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> tuple[str, int]:
    """Digest and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def hex_of(digest: str) -> str:
    """The hex part of ``sha256:<hex>``."""
    return digest.removeprefix("sha256:")
