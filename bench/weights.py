"""Weight files: sha256 verification before anything is loaded."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from gasbench.errors import GasbenchError


def gasbench_home() -> Path:
    """gasbench's cache: ``$GASBENCH_HOME``, else ``$XDG_CACHE_HOME/gasbench``, else ``~/.cache/gasbench``."""
    if os.environ.get("GASBENCH_HOME"):
        return Path(os.environ["GASBENCH_HOME"]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "gasbench"
    return Path.home() / ".cache" / "gasbench"


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
