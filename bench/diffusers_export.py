"""A gasbench solver as a diffusers scheduler (``gasbench export CELL --to diffusers DIR``).

Every multistep solver gasbench runs, learned or handcrafted, is one static table of GAS Eq. 13:

    x_{n+1} = sum_{j<=n} a[n, j] x_j + sum_{j<=n} c[n, j] D(x_j, sigma_j),   n = 0..M-1,

with x_0 = x_T and sigma_j the noise level each point is fed to the network at (for decoupled
solvers such as GS it differs from the integration grid; the table holds only the former, so
decoupling needs nothing more). :class:`GasbenchScheduler` replays such a table inside a diffusers
pipeline: ``set_timesteps`` gives the M network timesteps, and ``step`` turns the network's output
into the EDM denoised D_n with the conversion gasbench's diffusers teacher uses (discrete VP
eps / v / sample, EDM preconditioning or flow matching; :mod:`gasbench.teachers.diffusers_teacher`),
keeps x_0..x_n and D_0..D_n and returns x_{n+1} in the pipeline's variables.

The pipeline's variable between steps is the network's input, x_n scaled for the network at
sigma_n (VP: x_n / sqrt(1 + sigma_n^2)), so ``scale_model_input`` is the identity and pipelines that
never call it (DDPMPipeline, DDIMPipeline) see the same inputs as gasbench. The last step returns
gasbench's sample itself (EDM space, at the table's final noise level), what the pipeline decodes.
``init_noise_sigma`` maps unit noise to gasbench's x_T = sigma_max * noise in those variables;
pipelines that skip that scaling (DDPMPipeline, DDIMPipeline, DiTPipeline) start from the network
input = unit noise instead, i.e. from x_T = noise / init_noise_sigma * sigma_max (VP: a factor
1 + 1 / (2 sigma_max^2) away, 2e-5 for DDPM's linear betas).

Solvers that choose their rows while sampling (:class:`~gasbench.solvers.executor.AdaptiveTable`,
DLMS) have no static table and are refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import ConfigMixin, SchedulerMixin
from diffusers.configuration_utils import register_to_config
from diffusers.utils import BaseOutput

import gasbench
from gasbench.core.errors import GasbenchError
from gasbench.solvers.cells import load_cell
from gasbench.solvers.executor import AdaptiveTable, Table
from gasbench.teachers.time import DiscreteVPSchedule, EDMSchedule, FlowMatchSchedule, NoiseSchedule


def schedule_state(schedule: NoiseSchedule) -> dict[str, Any]:
    """The JSON description of a teacher's training schedule that :func:`schedule_from_state` reads:
    discrete VP by its alphabar_k (recovered from sigma_k = sqrt((1 - alphabar_k) / alphabar_k)),
    EDM by its constants, flow matching by its length and shift."""
    if isinstance(schedule, DiscreteVPSchedule):
        return {"kind": schedule.kind, "prediction_type": schedule.prediction_type,
                "alphas_cumprod": torch.sigmoid(-2 * schedule.log_sigmas).tolist()}
    if isinstance(schedule, EDMSchedule):
        return {"kind": schedule.kind, "prediction_type": schedule.prediction_type, "sigma_min": schedule.sigma_min,
                "sigma_max": schedule.sigma_max, "sigma_data": schedule.sigma_data}
    if isinstance(schedule, FlowMatchSchedule):
        return {"kind": schedule.kind, "num_train_timesteps": schedule.steps, "shift": schedule.shift}
    raise GasbenchError(f"cannot export a solver for a {type(schedule).__name__}: the scheduler converts discrete VP, "
                        f"EDM and flow-matching models.")


def schedule_from_state(state: dict[str, Any]) -> NoiseSchedule:
    """The :class:`NoiseSchedule` that :func:`schedule_state` described."""
    kind = state.get("kind")
    if kind == DiscreteVPSchedule.kind:
        return DiscreteVPSchedule(torch.tensor(state["alphas_cumprod"], dtype=torch.float64), state["prediction_type"])
    if kind == EDMSchedule.kind:
        return EDMSchedule(state["sigma_min"], state["sigma_max"], state["sigma_data"], state["prediction_type"])
    if kind == FlowMatchSchedule.kind:
        return FlowMatchSchedule(state["num_train_timesteps"], state["shift"])
    raise GasbenchError(f"noise_schedule kind {kind!r} in the scheduler config is not one gasbench writes "
                        f"({DiscreteVPSchedule.kind}, {EDMSchedule.kind}, {FlowMatchSchedule.kind}); re-export it.")


@dataclass
class GasbenchSchedulerOutput(BaseOutput):
    """``prev_sample``: the next network input (after the last step, the sample); ``pred_original_sample``:
    D_n, the denoised estimate of this step's evaluation, in data space."""

    prev_sample: torch.Tensor
    pred_original_sample: torch.Tensor


class GasbenchScheduler(SchedulerMixin, ConfigMixin):
    """A gasbench solver's Eq. 13 table as a diffusers scheduler; see the module docstring.

    Config: ``a``, ``c`` (M x M, row n makes x_{n+1} from x_0..x_n and D_0..D_n), ``sigmas`` (the M
    evaluation noise levels, EDM sigma-space), ``sigma_max`` (the noise level of x_T),
    ``noise_schedule`` (the network's training schedule, :func:`schedule_state`) and ``source``
    (provenance, not read: solver, options, teacher, NFE, the output's noise level and the
    teacher's classifier-free guidance scale, which a guided pipeline must be called with). Load with
    ``GasbenchScheduler.from_pretrained(DIR)`` and call the pipeline with ``num_inference_steps=M``.
    """

    order = 1

    @register_to_config
    def __init__(self, a: list, c: list, sigmas: list, sigma_max: float, noise_schedule: dict,
                 source: Optional[dict] = None):
        nfe = len(sigmas)
        for name, matrix in (("a", a), ("c", c)):
            if len(matrix) != nfe or any(len(row) != nfe or any(row[n + 1 :]) for n, row in enumerate(matrix)):
                raise GasbenchError(f"the scheduler config's '{name}' must be a lower-triangular {nfe} x {nfe} table "
                                    f"(one row per evaluation sigma); re-export the solver.")
        self.schedule = schedule_from_state(noise_schedule)
        self.nfe = nfe
        self._a, self._c = a, c
        self._sigmas = torch.tensor(sigmas, dtype=torch.float64)
        # the network input is linear in x: one scale per evaluation, and the timestep it is fed
        scales, timesteps = self.schedule.model_input(torch.ones(nfe, 1, dtype=torch.float64), self._sigmas)
        self._input_scales = scales[:, 0].tolist()
        self._timesteps = timesteps.to(torch.float32)  # gasbench feeds the network float32 timesteps
        self.init_noise_sigma = float(sigma_max) * self._input_scales[0]
        self.set_timesteps()

    @classmethod
    def from_table(cls, table: Table, teacher, source: Optional[dict] = None) -> "GasbenchScheduler":
        """The scheduler of ``table`` (from ``solver.table(teacher, nfe)``) for the network of ``teacher``,
        a diffusers teacher (its ``schedule`` converts the network's outputs)."""
        solver = (source or {}).get("solver", "this solver")
        if isinstance(table, AdaptiveTable):
            raise GasbenchError(
                f"{solver} chooses its steps and coefficients per sample while sampling (an adaptive table, as DLMS's "
                f"designer network does); a diffusers scheduler replays one fixed table, so it cannot be exported. "
                f"Export a solver with a fixed table (gs, gas, s4s, ld3 or a handcrafted one)."
            )
        schedule = getattr(teacher, "schedule", None)
        if not isinstance(schedule, NoiseSchedule):
            raise GasbenchError(
                f"teacher '{teacher.name}' is not a diffusers model, so no diffusers pipeline runs its network; export "
                f"cells of a diffusers teacher (gasbench run --dataset diffusers:<folder or hub id>)."
            )
        return cls(a=table.a.tolist(), c=table.c.tolist(), sigmas=table.sigmas.tolist(),
                   sigma_max=float(teacher.sigma_max), noise_schedule=schedule_state(schedule),
                   source={**(source or {}), "sigma_final": float(table.sigma_final),
                           "guidance_scale": getattr(teacher, "guidance_scale", 1.0),
                           "embedded_guidance": getattr(teacher, "embedded_guidance", None),
                           "size": list(getattr(teacher, "size", ())) or None})

    def set_timesteps(self, num_inference_steps: Optional[int] = None, device: "str | torch.device | None" = None,
                      sigmas: Optional[list] = None, mu: Optional[float] = None):
        """Start a new solve: the M network timesteps on ``device``; ``num_inference_steps`` must be M (or None).

        ``sigmas`` and ``mu`` are accepted because flow pipelines pass their default grid and dynamic
        shift (FluxPipeline always does) and unused: the table's steps are the solver's, for the
        resolution the cell was run at (its teacher's recorded shift)."""
        if num_inference_steps is not None and num_inference_steps != self.nfe:
            source = self.config.source or {}
            raise GasbenchError(
                f"this scheduler is {source.get('solver', 'a gasbench solver')} at NFE {self.nfe}; call the pipeline "
                f"with num_inference_steps={self.nfe} (got {num_inference_steps})."
            )
        self.num_inference_steps = self.nfe
        self.timesteps = self._timesteps.to(device)
        self._step_index = 0
        self._states: list[torch.Tensor] = []  # x_0..x_n, EDM space, float64
        self._denoised: list[torch.Tensor] = []  # D_0..D_n

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Pipelines that set where the loop starts (FluxPipeline) must start at step 0."""
        if begin_index != 0:
            raise GasbenchError(f"the exported table is replayed from pure noise through all {self.nfe} steps; "
                                f"it cannot begin at step {begin_index} (image-to-image).")

    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """The identity: the pipeline's variable is already the network's input."""
        return sample

    def step(self, model_output: torch.Tensor, timestep, sample: torch.Tensor, eta: float = 0.0,
             use_clipped_model_output: Optional[bool] = None, generator: Optional[torch.Generator] = None,
             return_dict: bool = True):
        """Row n of Eq. 13 after the network's output at evaluation n.

        ``sample`` is the network input x_n was fed as (the state is read from it, so a pipeline may
        edit it between steps); a learned-sigma output (2C channels) keeps its first C. ``eta`` must
        be 0 (the solver is deterministic; DDIM-style pipelines pass it); ``use_clipped_model_output``
        and ``generator`` are accepted because DDIMPipeline and DDPMPipeline pass them, and unused.
        """
        n = self._check_step(timestep, eta)
        sigma = self._sigmas[n].to(sample.device).expand(sample.shape[0])
        x = sample.to(torch.float64) / self._input_scales[n]
        output = model_output[:, : sample.shape[1]].to(torch.float64)
        denoised = self.schedule.to_denoised(output, x, sigma)
        self._states.append(x)
        self._denoised.append(denoised)
        weights = self._a[n][: n + 1] + self._c[n][: n + 1]
        x_next = sum((w * v for w, v in zip(weights, self._states + self._denoised) if w != 0), torch.zeros_like(x))
        self._step_index = n + 1
        if n + 1 < self.nfe:
            x_next = self.schedule.model_input(x_next, self._sigmas[n + 1].to(sample.device).expand(sample.shape[0]))[0]
        prev_sample, denoised = x_next.to(sample.dtype), denoised.to(sample.dtype)
        if not return_dict:
            return (prev_sample,)
        return GasbenchSchedulerOutput(prev_sample=prev_sample, pred_original_sample=denoised)

    def _check_step(self, timestep, eta: float) -> int:
        n = self._step_index
        if eta != 0:
            raise GasbenchError(f"eta={eta}: a gasbench solver is deterministic (an ODE solver); use eta=0.")
        if n >= self.nfe:
            raise GasbenchError(f"all {self.nfe} steps of this solve are done; call set_timesteps before the next one.")
        expected, given = float(self.timesteps[n]), float(torch.as_tensor(timestep).reshape(-1)[0])
        if abs(given - expected) > 1e-4 * max(1.0, abs(expected)):
            raise GasbenchError(
                f"step {n} of the exported table is at timestep {expected:.6g}, but the pipeline passed {given:.6g}: "
                f"the scheduler replays the table from pure noise through all {self.nfe} steps in order (no "
                f"image-to-image start, no skipped steps), with set_timesteps before each solve."
            )
        return n


# --- exporting a result cell -------------------------------------------------------------------


def export_cell(cell: Path, out: Path, teacher: Optional[str] = None) -> GasbenchScheduler:
    """Write the scheduler of ``cell``'s solver to ``out`` (``scheduler_config.json``) and return it."""
    if Path(out).is_file():
        raise GasbenchError(f"{out} is a file; pass a directory to write the scheduler's config to.")
    solver, loaded, nfe = load_cell(cell, teacher)
    table = solver.table(loaded, nfe)
    source = {"solver": solver.name, "options": solver.resolved_config(loaded), "teacher": loaded.name,
              "teacher_sha256": loaded.weights_sha256, "nfe": nfe, "cell": str(cell), "gasbench": gasbench.__version__}
    scheduler = GasbenchScheduler.from_table(table, loaded, source)
    scheduler.save_pretrained(out)
    return scheduler
