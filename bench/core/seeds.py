"""Seeds: which seeds each split uses and what a seed draws (the floor the solvers, the teachers
and the harness share).

Sample i always uses its own seed's generator (EDM's convention), so a sample never depends on
the batch size: noise first, then the condition, from ``torch.Generator().manual_seed(seed)``.
"""

from __future__ import annotations

from typing import Optional

import torch

# Disjoint seed ranges: the GAS release trains from seed 0 and evaluates from 50,000; gasbench
# keeps 40,000-49,999 for validation.
SPLIT_STARTS = {"train": 0, "validation": 40_000, "evaluation": 50_000}
SPLIT_ENDS = {"train": 40_000, "validation": 50_000, "evaluation": None}
# Default sizes from the papers: GS trains on 1,400 pairs (GAS uses 5,000; LD3 about 50, S4S 700,
# S4S-Alt 1,400; each method asks for its own), 1,000 validation pairs, and 50,000 evaluation
# samples for the papers' teachers (the built-in teachers' runs default to 1,000, see RunConfig).
SPLIT_SIZES = {"train": 1_400, "validation": 1_000, "evaluation": 50_000}


def noise_and_conditions(teacher, seeds: list[int]) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Unit-variance noise (B, *shape) in float64 and the conditions, one generator per seed."""
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    noise = torch.stack([torch.randn(teacher.shape, generator=g, dtype=torch.float64) for g in generators])
    return noise, teacher.conditions(generators)
