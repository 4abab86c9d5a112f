"""DLMS. Liang, Fang, Chen & Wang (2025), "Linear multistep solver distillation for fast sampling
of diffusion models", Sec. 3.1-3.3, Eq. 8-10, Algorithms 1-2, Appendix B.

Sampling (Algorithm 2) in EDM sigma space (alpha = 1, sigma_t = t): after each evaluation
D_{n-1} = D(x_{n-1}, s_{n-1} sigma_{n-1}), the designer network g_phi reads its bottleneck feature
h_{n-1}, its time and the step index, and gives *per sample* the coefficients, the next time step
and the next time scale of a data-prediction multistep update:

    D_n = sum_{k=1}^{m} a_k D_{n-k},  sum_k a_k = 1,                                 (Eq. 8)
    x_n = sigma_n / sigma_{n-1} x_{n-1} + (1 - sigma_n / sigma_{n-1}) D_n,             (Eq. 9)

of order m = min(p, evaluations so far) (p: option ``order``). Rows depend on the sample, so the
solver is an :class:`~gasbench.solvers.executor.AdaptiveTable` run by the shared executor
(:mod:`gasbench.solvers.dlms_designer`: g_phi, Eq. 8-9 and that table).

g_phi (Fig. 2; "modified from AMED-Plugin", Appendix A) maps embeddings of the bottleneck feature
h (without gradient), the time and the step index through a fully connected layer to p + 1
outputs: a_2..a_p (a_1 = 1 - the others, so the sum is one exactly), the next time and the time
scale. Option ``designer``: ``embeddings`` is AMED-Plugin's ``AMED_predictor`` (diff-sampler,
amed-solver-main/training/networks.py): h -> ``hidden`` (its 128) -> SiLU -> 4 units, the EDM time
sigma (Sec. 4.1: sigma_t = t) -> 8 sinusoidal channels -> linear -> SiLU, and the step index's
embedding as per-step output biases; 9.0k parameters on a 64-channel h (Sec. 4.1: "only 9k"), the
paper's form (:meth:`DLMSSolver.paper_budget`). ``mlp`` (default) is one hidden layer on the raw
[h, t, one-hot step index], 2.5k parameters on digits at ``hidden`` = 32: at the CPU budget it
fitted better than ``embeddings`` (whose outputs move through 12 weights only) and than itself at
128 units (9.8k parameters, unstable at lr 5e-3 over training seeds). h is the teacher's
bottleneck: the built-in UNets' middle block mean-pooled over space (AMED-Plugin takes the 8x8
map's channel mean, solvers_amed.py ``get_amed_prediction``); analytic teachers give a
substitute (:meth:`Teacher.denoise_with_features`).

The last layer's weights start at zero, so the untrained solver is its output biases (Sec. 3.3,
high-order initialisation): PLMS (Adams-Bashforth weights with warm-up orders on the data
predictions) on the ``schedule`` (time-uniform, as the paper) with time scales 1. Next time (the
paper fixes t_N, not how t_n is parameterised): each step keeps a portion sigmoid(.) in
[eps, 1 - eps] of the remaining diffusion time t (``teacher.time.t``, where the time-uniform
schedule lives), t_n = delta + (t_{n-1} - delta) portion, so per-sample schedules decrease
strictly, and the last step ends at delta = t(sigma_min). Time scale (the paper states no
bound), option ``time_scale``: ``exp`` (default, unbounded) or ``bounded``, AMED-Plugin's
1 - b + 2b sigmoid(.) in [1 - b, 1 + b] for b = ``scale_bound`` (networks.py ``scale_time``; 0.2
in its launch.sh; b = 0 is Table 3's "w/o time scaling"), whose slope b/2 at 0 also slows the
scale's learning.

Analytical first step (AFS, Sec. 3.3, option ``afs``, default on as the paper's main results): x_T
is a virtual step with D_0 = 0 and h_0 = 0, no network call, so NFE evaluations make NFE + 1
steps and the first evaluation time t_1 and scale s_1 are learned. As in Algorithm 1, the zero
output enters the buffer Q like any other (PLMS's warm-up extrapolates from it; on digits,
whose mean is far from zero, leaving it out trained worse at NFE 4 and 10).

Training (Algorithm 1): student and teacher start from the batch's train noise; the teacher Phi_t
is DPM-Solver++ (the paper gives no order: 2M here, :func:`dpmpp2m_interval`) with
``interpolation_steps`` M intermediate steps, uniform in log sigma, between the student's
consecutive per-sample times, restarted at each interval (Phi_t(x_{n-1}^T, t_{n-1}, t_n, M) takes
only the state), run without gradient. For n = 2..N the student's x_{n-1} is recomputed from the
detached x_{n-2} with the live t_{n-1}, s_{n-1} and coefficients, evaluated, and stepped to x_n
with t_n stopped; the loss d(x_n^S, x_n^T) is backpropagated at once, then the buffer Q, x_{n-1}
and t_{n-1} are detached, so memory does not grow with NFE. One gradient clip and Adam step per
batch (lr 5e-3, as the paper); the shared fit loop keeps the EMA. d is the squared distance; at
the final step it is the ``loss`` option (L2 by default), which is also the validation loss
against the cached reference solutions, as for every learned solver (the paper's Inception
distance there for pixel teachers has no differentiable counterpart in gasbench; the paper budget
uses LPIPS-VGG). Appendix B's settings per teacher: :meth:`DLMSSolver.paper_budget`.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import register_solver
from gasbench.solvers.dlms_designer import FEATURE_UNITS, PORTION_EPS, TIME_CHANNELS, Designer, DLMSTable, multistep
from gasbench.solvers.executor import PerSampleTable, execute
from gasbench.solvers.handcrafted import ADAMS_BASHFORTH
from gasbench.solvers.learned import LOSSES, TRAINING_OPTIONS, LearnedSolver, distillation_loss
from gasbench.solvers.schedules import make_sigmas

DESIGNERS = ("embeddings", "mlp")
TIME_SCALES = ("exp", "bounded")
# Appendix B: order p, interpolation steps M, trajectories; batch: see paper_budget. afhqv2 (not in
# the paper) takes FFHQ's; the paper's ImageNet 256 is Guided-Diffusion (pixel, guidance 2.0).
PAPER_SETTINGS = {
    "cifar10": (4, 4, 20_000, 128),
    "ffhq": (4, 4, 20_000, 64),
    "afhqv2": (4, 4, 20_000, 64),
    "lsun-bedroom": (3, 1, 10_000, 64),
    "imagenet256": (3, 3, 5_000, 64),
    "imagenet256-dit": (3, 3, 5_000, 64),
    "sd15": (2, 1, 5_000, 32),
}
MODALITY_SETTINGS = {"pixel": "cifar10", "latent": "lsun-bedroom", "text": "sd15"}
PAPER_EMA_HALF_LIFE_KIMG = 2  # Sec. 3.3: half-lives of 1, 2 and 3 kimg


def dpmpp2m_interval(sigma_from: torch.Tensor, sigma_to: torch.Tensor, steps: int) -> PerSampleTable:
    """Phi_t: DPM-Solver++(2M) (Lu et al., 2022b, arXiv:2211.01095, Alg. 2) from sigma_from to
    sigma_to (B,) in ``steps`` + 1 sub-steps uniform in log sigma, per sample; first order first."""
    k = steps + 1
    u = torch.linspace(0.0, 1.0, k + 1, dtype=torch.float64)
    sig = torch.exp(sigma_from.log()[:, None] * (1 - u) + sigma_to.log()[:, None] * u)
    h = torch.log(sig[:, :-1] / sig[:, 1:])
    phi_1 = torch.expm1(-h)
    a = sig.new_zeros(len(sig), k, k)
    c = torch.zeros_like(a)
    j = torch.arange(k)
    a[:, j, j] = sig[:, 1:] / sig[:, :-1]
    c[:, j, j] = -phi_1
    if k > 1:  # second order from the second sub-step: D1 = (D_j - D_{j-1}) / r0
        r0 = h[:, :-1] / h[:, 1:]
        c[:, j[1:], j[1:]] = -phi_1[:, 1:] * (1 + 0.5 / r0)
        c[:, j[1:], j[1:] - 1] = 0.5 * phi_1[:, 1:] / r0
    return PerSampleTable(a, c, sig[:, :-1], sigma_final=sig[:, -1])


@register_solver("dlms", description="DLMS (Liang et al.): per-sample learned multistep coefficients, steps and time scales")
class DLMSSolver(LearnedSolver):
    """DLMS; see the module docstring.

    CPU budget for the built-in teachers: 60 iterations at batch 20 (1,200 trajectories; the paper
    distils on 5k-20k, :meth:`paper_budget`) drawn from 700 train pairs, of which only the noise is
    used (the teacher solver runs online). An iteration costs (:meth:`passes_per_iteration`)
    (NFE + 1)(M + 1) teacher and NFE student evaluations with their backward passes: on digits
    about 0.5 s at NFE 4 and 1.5 s at NFE 10 on one core.
    """

    name = "dlms"
    options = {
        "schedule": "time-uniform",
        "order": 4,
        "afs": True,
        "interpolation_steps": 4,
        "designer": "mlp",
        "hidden": 32,
        "time_scale": "exp",
        "scale_bound": 0.2,
        **{k: v for k, v in TRAINING_OPTIONS.items() if k != "checkpointing"},
        "iterations": 60,
        "batch_size": 20,
        "lr": 5e-3,
        "loss": "l2",
        "train_size": 700,
    }
    choices = {"order": tuple(ADAMS_BASHFORTH), "loss": LOSSES, "designer": DESIGNERS, "time_scale": TIME_SCALES}
    validation_size = 200  # S4S's: the same 700 + 200 teacher pairs serve both

    @classmethod
    def paper_budget(cls, teacher) -> dict:
        """Appendix B per teacher (by name, else by modality: pixel EDM, latent LSUN-Bedroom,
        text Stable Diffusion): order p, interpolation steps M, trajectories (one noise each, used
        once). Sec. 4.1: Adam 5e-3, time-uniform PLMS start, the 9k designer (Fig. 2). Sec. 3.3:
        AFS; EMA half-life 1, 2 or 3 kimg (2 here; the paper keeps the best of four sets); an
        Inception distance at the final step for pixel teachers (LPIPS-VGG here, the nearest).
        No batch size is given: AMED-Plugin's launch.sh (whose designer DLMS modifies, Appendix A)
        uses 128 on CIFAR-10, 64 on FFHQ, ImageNet-64 and LSUN-Bedroom, 32 on Stable Diffusion."""
        name = teacher.name if teacher.name in PAPER_SETTINGS else MODALITY_SETTINGS.get(teacher.modality)
        if name is None:
            return {}
        order, steps, trajectories, batch = PAPER_SETTINGS[name]
        return {"order": order, "interpolation_steps": steps, "designer": "embeddings", "hidden": 128,
                "schedule": "time-uniform", "afs": True, "lr": 5e-3, "batch_size": batch,
                "train_size": trajectories, "iterations": trajectories // batch,
                "ema": 0.5 ** (batch / (PAPER_EMA_HALF_LIFE_KIMG * 1000)),
                "loss": "lpips-vgg" if teacher.modality == "pixel" else "l2"}

    def passes_per_iteration(self, nfe: int) -> int:
        """Network passes per iteration (Algorithm 1): per sample, the N - 1 student evaluations
        of steps 2..N forward and backward, the teacher's M + 1 evaluations in each of the N
        intervals forward only, and without AFS the first evaluation, forward only."""
        points, steps = self._points(nfe), self.config["interpolation_steps"]
        per_sample = 2 * (points - 1) + points * (steps + 1) + (0 if self.config["afs"] else 1)
        return per_sample * min(self.config["batch_size"], self.config["train_size"])

    def __init__(self, **options):
        super().__init__(**options)
        if self.config["interpolation_steps"] < 0:
            raise GasbenchError(f"solver 'dlms' needs interpolation_steps >= 0, got {self.config['interpolation_steps']}.")
        if self.config["hidden"] < 1:
            raise GasbenchError(f"solver 'dlms' needs hidden >= 1 designer units, got {self.config['hidden']}.")
        if not 0 <= self.config["scale_bound"] < 1:
            raise GasbenchError(f"solver 'dlms' needs 0 <= scale_bound < 1 (bounded time scales lie in [1 - b, 1 + b]), "
                                f"got {self.config['scale_bound']}.")

    def _points(self, nfe: int) -> int:
        if nfe < 1:
            raise GasbenchError(f"NFE must be at least 1, got {nfe}.")
        return nfe + int(self.config["afs"])

    def initial_biases(self, teacher, points: int) -> torch.Tensor:
        """Per-step output biases (points, p + 1) that make the untrained designer PLMS on
        ``schedule`` with time scales 1 (Sec. 3.3, high-order initialisation)."""
        cfg = self.config
        sigmas = make_sigmas(cfg["schedule"], points, teacher)
        t = torch.tensor([teacher.time.t(float(s)) for s in sigmas], dtype=torch.float64)
        t_max, delta = teacher.time.t(teacher.sigma_max), teacher.time.t(teacher.sigma_min)
        t[0], t[-1] = t_max, delta
        portions = (t[1:-1] - delta) / (t[:-2] - delta)
        if not bool(((portions > PORTION_EPS) & (portions < 1 - PORTION_EPS)).all()):
            raise GasbenchError(f"schedule '{cfg['schedule']}' does not give {points} strictly decreasing steps for DLMS.")
        b2 = torch.zeros(points, cfg["order"] + 1, dtype=torch.float64)
        designer = Designer({}, teacher, points, cfg["order"], cfg["afs"])
        for n in range(points):
            m = designer.history(n)
            if m > 1:  # PLMS: Adams-Bashforth weights of the warm-up order on D_n, D_{n-1}, ...
                b2[n, : m - 1] = torch.tensor(ADAMS_BASHFORTH[m][1:], dtype=torch.float64)
            if n < points - 1:
                b2[n, -2] = torch.logit((portions[n] - PORTION_EPS) / (1 - 2 * PORTION_EPS))
        return b2

    def parameters_for(self, teacher, nfe: int) -> dict[str, torch.Tensor]:
        cfg, points = self.config, self._points(nfe)
        b2 = self.initial_biases(teacher, points)
        width, out = cfg["hidden"], cfg["order"] + 1
        generator = torch.Generator().manual_seed(cfg["seed"])
        zeros = lambda *shape: torch.zeros(*shape, dtype=torch.float64)  # noqa: E731
        draw = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64) * 2 - 1  # noqa: E731
        if cfg["designer"] == "mlp":
            inputs = teacher.feature_dim + 1 + points
            bound = 1 / math.sqrt(inputs)  # torch.nn.Linear's default initialisation
            return {"w1": draw(inputs, width) * bound, "b1": draw(width) * bound, "w2": zeros(width, out), "b2": b2}
        # AMED-Plugin's Linear: kaiming-normal weights (xavier-uniform for the time map), zero biases
        normal = lambda fan_in, fan_out: (  # noqa: E731
            torch.randn(fan_in, fan_out, generator=generator, dtype=torch.float64) / math.sqrt(fan_in))
        features = teacher.feature_dim
        return {"feature_w1": normal(features, width), "feature_b1": zeros(width),
                "feature_w2": normal(width, FEATURE_UNITS), "feature_b2": zeros(FEATURE_UNITS),
                "time_w": draw(TIME_CHANNELS, TIME_CHANNELS) * math.sqrt(3 / TIME_CHANNELS), "time_b": zeros(TIME_CHANNELS),
                "w2": zeros(FEATURE_UNITS + TIME_CHANNELS, out), "b2": b2}

    def designer(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> Designer:
        cfg = self.config
        bound = cfg["scale_bound"] if cfg["time_scale"] == "bounded" else None
        return Designer(params, teacher, self._points(nfe), cfg["order"], cfg["afs"], cfg["designer"], bound)

    def table_from(self, params: dict[str, torch.Tensor], teacher, nfe: int) -> DLMSTable:
        return DLMSTable(self.designer(params, teacher, nfe))

    # --- Algorithm 1 -----------------------------------------------------------------------------

    def distillation_steps(self, params, teacher, nfe: int, batch: dict[str, torch.Tensor]
                           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Algorithm 1 on one batch: yields, for n = 2..N, the loss L_n (to backpropagate before
        the next one is computed) and the student's x_n it compares with the teacher's."""
        d = self.designer(params, teacher, nfe)
        denoiser = teacher.denoiser(batch.get("cond"))
        x_prev = x_teacher = batch["noise"].to(torch.float64) * teacher.sigma_max
        t_prev = torch.full((len(x_prev),), d.t_max, dtype=torch.float64)
        history = []  # the buffer Q of outputs, detached
        if self.config["afs"]:
            history, h_prev = [torch.zeros_like(x_prev)], x_prev.new_zeros(len(x_prev), teacher.feature_dim)
        else:
            with torch.no_grad():
                d0, h_prev = denoiser.with_features(x_prev, d.sigma(t_prev))
            history, h_prev = [d0], h_prev.to(torch.float64)
        teacher_step = lambda x, s_from, s_to: execute(  # noqa: E731
            dpmpp2m_interval(s_from, s_to, self.config["interpolation_steps"]), denoiser, x)
        for n in range(2, d.points + 1):
            # lines 7-10: x_{n-1} from the detached x_{n-2} with live t_{n-1}, s_{n-1}, coefficients
            a, t_cur, s_cur = d(n - 2, h_prev, t_prev)
            x_cur = multistep(x_prev, d.sigma(t_prev), d.sigma(t_cur), a, history)
            d_cur, h_cur = denoiser.with_features(x_cur, s_cur * d.sigma(t_cur))
            h_cur = h_cur.detach().to(torch.float64)
            # lines 11-14: x_n with t_n stopped
            a, t_next, _ = d(n - 1, h_cur, t_cur)
            t_next = t_next.detach()
            x_next = multistep(x_cur, d.sigma(t_cur), d.sigma(t_next), a, history + [d_cur])
            with torch.no_grad():  # lines 15-18: the teacher's ground truth
                if n == 2:
                    x_teacher = teacher_step(x_teacher, d.sigma(t_prev), d.sigma(t_cur.detach()))
                x_teacher = teacher_step(x_teacher, d.sigma(t_cur.detach()), d.sigma(t_next))
            name = self.config["loss"] if n == d.points else "l2"
            yield distillation_loss(name, x_next, x_teacher, teacher), x_next
            # line 21: stop the gradients of the buffer and of t_{n-1}
            history = history + [d_cur.detach()]
            x_prev, t_prev, h_prev = x_cur.detach(), t_cur.detach(), h_cur

    def training_step(self, params, optimizer, teacher, nfe: int, batch: dict[str, torch.Tensor],
                      generator: torch.Generator, iteration: int, offsets=None) -> float:
        """Algorithm 1: the shared :meth:`~LearnedSolver.gradient_step` backpropagates each step's
        loss as it comes, then one clipped Adam step; returns the sum of the step losses."""
        if self._points(nfe) < 2:
            raise GasbenchError("DLMS without AFS has nothing to learn at NFE 1 (one fixed Euler step); use afs=true or NFE >= 2.")
        losses = ((loss, f", step {n}") for n, (loss, _) in enumerate(self.distillation_steps(params, teacher, nfe, batch), start=2))
        return self.gradient_step(params, optimizer, losses, iteration, nfe, len(batch["noise"]))

    # --- gasbench show ---------------------------------------------------------------------------

    @torch.no_grad()
    def steps(self, params: dict[str, torch.Tensor], teacher, nfe: int, samples: int = 64) -> dict[str, torch.Tensor]:
        """Per evaluation, means over the first ``samples`` validation seeds: the integration
        sigma_n, the time scale s_n, the evaluation sigma s_n sigma_n, its spread over samples
        (std), and the coefficients a_k of the update that follows."""
        from gasbench.core.seeds import SPLIT_STARTS, noise_and_conditions

        noise, cond = noise_and_conditions(teacher, list(range(SPLIT_STARTS["validation"], SPLIT_STARTS["validation"] + samples)))
        table = self.table_from(params, teacher, nfe)
        rows = []
        execute(table, teacher.denoiser(cond), noise * teacher.sigma_max, callback=rows.append)
        sigma = torch.full((samples,), float(teacher.time.sigma(torch.tensor(table.designer.t_max, dtype=torch.float64))),
                           dtype=torch.float64)
        out = {"sigma_n": [], "time scale s_n": [], "evaluation sigma": [], "evaluation sigma std": []}
        out.update({f"a_{k}": [] for k in range(1, self.config["order"] + 1)})
        for row in rows:
            n, r = row["i"], row["a"][row["i"]]
            if row["sigma"] is not None:
                out["sigma_n"].append(sigma.mean())
                out["time scale s_n"].append((row["sigma"] / sigma).mean())
                out["evaluation sigma"].append(row["sigma"].mean())
                out["evaluation sigma std"].append(row["sigma"].std())
                for k in range(1, self.config["order"] + 1):
                    c = row["c"][n + 1 - k] if n + 1 - k >= 0 else 0.0
                    out[f"a_{k}"].append((c / (1 - r)).mean() if isinstance(c, torch.Tensor) else torch.tensor(math.nan))
            sigma = sigma * r
        return {k: torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in values]) for k, values in out.items()}
