"""Sample grids as PNG files."""

from __future__ import annotations

import io
from pathlib import Path

import torch
from PIL import Image
from torchvision.utils import make_grid

from gasbench.records import write_atomic


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
