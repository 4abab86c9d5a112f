"""Weight files: sha256 verification before anything is loaded."""

from __future__ import annotations

import hashlib
from pathlib import Path

from gasbench.errors import GasbenchError


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_weights(path: Path, expected_sha256: str, how_to_fix: str) -> Path:
    """Return ``path`` if it exists and hashes to ``expected_sha256``; otherwise explain."""
    path = Path(path)
    if not path.is_file():
        raise GasbenchError(f"weights file {path} does not exist. {how_to_fix}")
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise GasbenchError(
            f"weights file {path} is corrupt or not the pinned one: sha256 {actual[:16]}..., "
            f"expected {expected_sha256[:16]}.... {how_to_fix}"
        )
    return path
