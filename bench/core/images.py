"""Sample grids as PNG files."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image
from torchvision.utils import make_grid

from gasbench.core.errors import GasbenchError
from gasbench.core.records import write_atomic


def save_grid(images: torch.Tensor, path: Path, nrow: int = 8, min_side: int = 48) -> None:
    """Save images in [0, 1] (B, C, H, W) as one grid, upscaled (nearest) so small ones are visible."""
    scale = max(1, -(-min_side // images.shape[-1]))
    if scale > 1:
        images = torch.nn.functional.interpolate(images, scale_factor=scale, mode="nearest")
    grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=2, pad_value=1.0)
    array = (grid.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    if array.shape[2] == 1:
        array = array[:, :, 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    write_atomic(Path(path), buffer.getvalue())


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def read_image_set(path: Path, limit: Optional[int] = None) -> tuple[torch.Tensor, str]:
    """Real images for distribution metrics from a user's reference set, as (N, C, H, W) in [0, 1],
    and a description naming the set and how many images were read.

    ``path`` is a folder of image files (read in sorted order), a ``.zip`` of image files (the
    EDM dataset format), or an ``.npz`` whose first array is uint8 images (N, H, W, C) or
    (N, C, H, W); the npz is read without pickle. ``limit`` keeps the first images only.
    """
    path = Path(path).expanduser()
    try:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
            arrays = [_pixels(f) for f in files]
        elif path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive:
                names = sorted(n for n in archive.namelist() if Path(n).suffix.lower() in IMAGE_SUFFIXES)[:limit]
                arrays = [_pixels(io.BytesIO(archive.read(n))) for n in names]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                stack = data[data.files[0]][:limit]
            if stack.ndim == 4 and stack.shape[1] in (1, 3) and stack.shape[-1] not in (1, 3):
                stack = stack.transpose(0, 2, 3, 1)
            arrays = list(stack)
        else:
            raise GasbenchError(f"reference images {path}: expected a folder, a .zip or an .npz of images.")
        if not arrays:
            raise GasbenchError(f"reference images {path} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
        stacked = np.stack([a if a.ndim == 3 else a[:, :, None] for a in arrays])
    except GasbenchError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise GasbenchError(f"reference images {path} could not be read ({exc}); pass a folder, .zip or .npz of same-sized images.") from None
    if stacked.dtype != np.uint8:
        raise GasbenchError(f"reference images {path} must be 8-bit images, found dtype {stacked.dtype}.")
    images = torch.from_numpy(stacked).permute(0, 3, 1, 2).float() / 255
    return images, f"{len(images)} images from {path}"


def _pixels(source) -> np.ndarray:
    with Image.open(source) as image:
        return np.asarray(image.convert("L" if image.mode in ("L", "1") else "RGB"))
