"""GAS under its own conditions on a built-in teacher (GAS Sec. 3.2, Appendix D.4): a
discriminator pre-trained on the teacher's domain, then long GS and GAS fits from the same start
on the same pairs, scored along the way on the same seed sets.

* :func:`pretrain_discriminator`: the CPU analogue of the pretrained R3GAN the paper fine-tunes:
  the compact discriminator trained with R3GAN's loss (relativistic + gamma/2 (R1 + R2), the loss
  GAS's own discriminator steps use) on the teacher's training samples against the samples GS
  starts from (DPM-Solver++(3M) at the fit's NFE, from other noise), written to
  ``$GASBENCH_HOME/discriminators/`` for ``--solver-arg discriminator=compact-pretrained``.
* :func:`fit_curves`: each method fitted in segments up to each milestone (a fit resumes from its
  checkpoint when its iteration cap grows, with the same batches, EMA and optimiser state as one
  long fit), early stopping off, and after each milestone FD and KD (the domain kernel distance)
  per seed set; resumable at any point (the curve file and the fit checkpoints).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.progress import Bars
from gasbench.core.records import write_json_atomic
from gasbench.core.registry import SOLVERS
from gasbench.metrics import Evaluation, get_metric
from gasbench.paired import differ_p_value, paired_difference
from gasbench.sampling import sample_seeds
from gasbench.solvers.discriminator import pretrained_compact_file, save_compact
from gasbench.solvers.executor import execute
from gasbench.trajectories import TrajectoryCache

CURVE_METRICS = ("fd", "kd")


def _pairs(teacher, split: str, size: int) -> dict[str, torch.Tensor]:
    """The teacher's (noise, solution[, condition]) pairs of a split, solved if not cached yet."""
    cache = TrajectoryCache.for_split(teacher, split, size)
    cache.generate()
    return {k: v for k, v in cache.load().items() if k in ("noise", "x0", "cond")}


@torch.no_grad()
def _initial_samples(teacher, nfe: int, count: int, cond: Optional[torch.Tensor], seed: int) -> torch.Tensor:
    """GS's starting point, DPM-Solver++(3M) at ``nfe``, from noise no training pair uses."""
    table = SOLVERS.get("dpmpp3m")().table(teacher, nfe)
    noise = torch.randn(count, *teacher.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    out = []
    for start in range(0, count, 100):
        c = cond[start : start + 100] if cond is not None else None
        out.append(execute(table, teacher.denoiser(c), noise[start : start + 100] * teacher.sigma_max).float())
    return torch.cat(out)


def pretrain_discriminator(teacher, nfe: int = 4, iterations: int = 2000, batch_size: int = 24, lr: float = 1e-4,
                           gamma: float = 0.2, width: int = 32, pairs: int = 1400, seed: int = 0,
                           progress: bool = True) -> dict[str, Any]:
    """Train the compact discriminator on the teacher's samples (real) against GS's starting
    samples (fake) with GAS's own discriminator step (R3GAN's loss, Adam at ``lr``); saves it and
    returns its provenance, with the fraction of held-out pairs it ranks right."""
    data = _pairs(teacher, "train", pairs)
    real, cond = data["x0"].float(), data.get("cond")
    fake = _initial_samples(teacher, nfe, len(real), cond, seed=10**6 + seed)
    held_out = max(1, len(real) // 10)
    # GAS's own discriminator and step (R3GAN's loss, its Adam), fed the fixed fakes
    gas = SOLVERS.get("gas")(disc_lr=lr, gamma=gamma, disc_width=width, seed=seed)
    gas.start_training(teacher, nfe)
    generator = torch.Generator().manual_seed(seed)
    with Bars(enabled=progress) as bars:
        task = bars.add_task(f"pretrain discriminator on {teacher.name}", total=iterations)
        for _ in range(iterations):
            index = torch.randint(held_out, len(real), (batch_size,), generator=generator)
            gas.discriminator_step(fake[index], real[index], cond[index] if cond is not None else None)
            bars.advance(task)
    disc = gas.discriminator
    with torch.no_grad():
        c = cond[:held_out] if cond is not None else None
        ranked = float((disc(real[:held_out], c) > disc(fake[:held_out], c)).float().mean())
    provenance = {"iterations": iterations, "batch_size": batch_size, "lr": lr, "gamma": gamma, "width": width,
                  "real": f"{pairs} training pairs of the teacher (the first {held_out} held out)",
                  "fake": f"dpmpp3m NFE {nfe}, noise seed {10**6 + seed}", "seed": seed,
                  "held_out_ranked_right": ranked}
    path = pretrained_compact_file(teacher)
    save_compact(disc, teacher, path, provenance)
    return {"path": str(path), **provenance}


def gradient_ratio(teacher, discriminator: str, nfe: int = 4, batch_size: int = 24) -> float:
    """How much the adversarial term weighs at GS's starting point: the norm of the gradient of
    GAS's relativistic loss over the solver's parameters, divided by the L1 distillation loss's, on
    the first ``batch_size`` training pairs, with the discriminator GAS would start from."""
    from gasbench.solvers.gas import relativistic_loss
    from gasbench.solvers.learned import distillation_loss

    gas = SOLVERS.get("gas")(discriminator=discriminator)
    gas.start_training(teacher, nfe)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in gas.parameters_for(teacher, nfe).items()}
    batch = {k: v[:batch_size] for k, v in _pairs(teacher, "train", gas.config["train_size"]).items()}
    cond = batch.get("cond")
    student = gas.solve(params, teacher, nfe, batch["noise"], cond)
    losses = (distillation_loss("l1", student, batch["x0"], teacher),
              relativistic_loss(gas.judge(student, cond), gas.judge(batch["x0"], cond)).mean())
    l1, adversarial = (torch.cat([g.flatten() for g in torch.autograd.grad(loss, list(params.values()),
                                                                           retain_graph=True, allow_unused=True)
                                  if g is not None]).norm() for loss in losses)
    return float(adversarial / l1)


def _sha256(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def fit_options(options: dict[str, Any], milestone: int) -> dict[str, Any]:
    """A curve's fit up to ``milestone``: the method's options, that cap, no early stopping."""
    return {**options, "iterations": milestone, "patience": 0, "validate_every": 0}


def fit_curves(teacher, methods: dict[str, dict[str, Any]], nfe: int, milestones: list[int], seed_sets: list[list[int]],
               out_dir: Path, batch_size: int = 250) -> dict[str, Any]:
    """Fit each of ``methods`` (label -> solver options; the solver is the label's part before
    '+') up to every milestone and score FD and KD per seed set after each; resumes from
    ``out_dir`` (``curve.json`` and one fit checkpoint per method)."""
    out_dir = Path(out_dir)
    curve_file = out_dir / "curve.json"
    curve = json.loads(curve_file.read_text()) if curve_file.is_file() else {"rows": []}
    setting = {"teacher": teacher.name, "teacher_sha256": getattr(teacher, "weights_sha256", None), "nfe": nfe,
               "seed_sets": [[s[0], s[-1]] for s in seed_sets], "methods": methods}
    if curve.get("setting", setting) != setting:
        raise GasbenchError(f"{curve_file} holds a curve of another setting; choose another --out or delete it.")
    discriminator = _sha256(pretrained_compact_file(teacher))
    if curve.get("discriminator_sha256", discriminator) != discriminator:
        raise GasbenchError(f"the pre-trained discriminator changed since {curve_file} was begun; choose another "
                            f"--out or delete it to start the curve over.")
    curve["setting"], curve["discriminator_sha256"] = setting, discriminator
    done = {(row["method"], row["iterations"]) for row in curve["rows"]}
    pairs = {}
    # milestone by milestone, so an interrupted curve has every method up to the same point
    for milestone in sorted(milestones):
        for label, options in methods.items():
            if (label, milestone) in done:
                continue
            solver = SOLVERS.get(label.split("+")[0])(**fit_options(options, milestone))
            if not pairs:  # every method fits the same pairs
                pairs = {split: _pairs(teacher, split, size)
                         for split, size in (("train", solver.config["train_size"]), ("validation", solver.validation_size))}
            result = solver.fit(teacher, nfe, pairs["train"], pairs["validation"],
                                checkpoint_path=out_dir / f"{label}.fit-checkpoint.pt")
            table = solver.table(teacher, nfe)
            scores = {name: [] for name in CURVE_METRICS}
            for seeds in seed_sets:
                evaluation = Evaluation(sample_seeds(teacher, table, seeds, batch_size), None, teacher)
                for name in CURVE_METRICS:
                    scores[name].append(float(get_metric(name).compute(evaluation)))
            curve["rows"].append({"method": label, "iterations": milestone, **scores,
                                  "fit_wall_s": result.wall_time_s, "validation_loss": result.final_validation_loss})
            write_json_atomic(curve_file, curve)
    return curve


def curve_markdown(curve: dict[str, Any], baseline: str, method: str) -> str:
    """One row per milestone: each method's FD and KD (mean over seed sets) and ``method`` minus
    ``baseline``, paired over the seed sets (mean +- std, two-sided paired t-test p-value)."""
    rows = {(r["method"], r["iterations"]): r for r in curve["rows"]}
    milestones = sorted({r["iterations"] for r in curve["rows"]})
    head = ["iterations"] + [f"{m} {name}" for name in CURVE_METRICS for m in (baseline, method)] \
        + [f"{method} - {baseline} {name}" for name in CURVE_METRICS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for k in milestones:
        a, b = rows.get((baseline, k)), rows.get((method, k))
        if a is None or b is None:
            continue
        cells = [str(k)]
        for name in CURVE_METRICS:
            cells += [f"{np.mean(a[name]):.4g}", f"{np.mean(b[name]):.4g}"]
        for name in CURVE_METRICS:
            mean, std = paired_difference(b[name], a[name])
            cells.append(f"{mean:+.3g} ± {std:.2g} (p {differ_p_value(b[name], a[name]):.2f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def curve_cells(results_dir: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every milestone of every curve under ``results_dir`` as a cell the claims can test:
    (teacher, the method's label with its options and ``iterations``, NFE) -> its per-seed-set
    values and seeds, as a record holds them."""
    from gasbench.runner import method_label

    cells = {}
    for path in sorted(Path(results_dir).glob("*/*/curve.json")):
        curve = json.loads(path.read_text())
        setting = curve["setting"]
        for row in curve["rows"]:
            name = row["method"].split("+")[0]
            label = method_label(name, fit_options(setting["methods"][row["method"]], row["iterations"]),
                                 SOLVERS.get(name).options)
            cells[(setting["teacher"], label, setting["nfe"])] = {
                "metrics_per_seed_set": {m: row[m] for m in CURVE_METRICS}, "seeds": setting["seed_sets"]}
    return cells
