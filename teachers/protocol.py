"""The evaluation protocol: how a teacher's cells are scored, apart from the model itself.

A teacher class holds one (:attr:`Teacher.protocol`); ``gasbench run`` uses it where the command
line says nothing (``--metrics``, ``-n``) and replaces fields for one run, e.g. the user's
``--reference-images`` (``dataclasses.replace``), without touching the teacher's own. The papers'
protocol (GAS Sec. 5, LD3 Sec. 5: FID on 50,000 samples against the whole real set) is the
default; the CPU teachers score 1,000 samples against a subset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class EvaluationProtocol:
    """``metrics``: what `gasbench run` records when --metrics is not given; ``samples``: samples
    per cell when -n is not given; ``real_images``: the real-image set's file name in
    ``$GASBENCH_HOME/real_images`` (a file, or a folder of that name without its suffix);
    ``full_reference_set``: FID on all the real images (else a subset, the CPU teachers');
    ``reference_images``: the user's own real images (a folder, .zip or .npz), which win."""

    metrics: tuple[str, ...] = ("rmse", "psnr")
    samples: int = 50_000
    real_images: Optional[str] = None
    full_reference_set: bool = True
    reference_images: Optional[Path] = None

    def real_image_path(self) -> Optional[Path]:
        """The real-image set to read: the user's, else ``real_images`` where it exists, else None."""
        from gasbench.core.weights import real_images_dir

        if self.reference_images is not None or not self.real_images:
            return self.reference_images
        default = real_images_dir() / self.real_images
        return next((p for p in (default, default.with_suffix("")) if p.exists()), None)
