"""The GAS release's artifacts: students and teacher datasets in the release's own file formats load
safely, sample as the release's code does, and go into the leaderboard as the authors' rows."""

from __future__ import annotations

import io
import os
import pickle
from collections import defaultdict

import numpy as np
import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.solvers.executor import ExecutionStats, execute
from gasbench.solvers.release import import_release_student, load_release_student, release_logits
from gasbench.teachers.base import ReferenceSolver, Teacher
from gasbench.teachers.time import DiscreteVPSchedule
from gasbench.teachers.gmm import GaussianMixtureTeacher
from gasbench.teachers.release import RELEASE_STUDENT_T_EPS, load_release_teacher_data, release_noise
from helpers import Payload, release_updates

BETA_0, BETA_1 = 0.1, 20.0  # the release's NoiseScheduleVP('linear') for EDM networks


def write_release_student(path, mu_logit, t_couple, a_diff, c_diff):
    """A checkpoint as the release's training.py saves it: torch_ema state of GSWrapper's
    parameters (mu_logit, t_couple, c1_diff, a1_diff, ..., cN_diff, aN_diff), float32."""
    nfe = len(t_couple)
    params = [torch.nn.Parameter(mu_logit.float()), torch.nn.Parameter(t_couple.float())]
    for i in range(nfe):
        params += [torch.nn.Parameter(c_diff[:, i].float().clone()), torch.nn.Parameter(a_diff[:, i].float().clone())]
    optim = torch.optim.Adam(params, lr=1e-3)
    ema = {"decay": 0.999, "num_updates": 10_000, "shadow_params": [p.detach().clone() for p in params],
           "collected_params": None}
    torch.save({"ema": ema, "model": params, "optim": optim.state_dict(), "step": 10_000}, path)


def linear_log_alpha(t):
    """log alpha(t) of the release's NoiseScheduleVP('linear') for EDM networks."""
    return -0.25 * t**2 * (BETA_1 - BETA_0) - 0.5 * t * BETA_0


def discrete_log_alpha(alphas_cumprod):
    """log alpha(t) of its NoiseScheduleVP('discrete'): through t_k = (k + 1) / N (inside the grid)."""
    knots = np.arange(1, len(alphas_cumprod) + 1) / len(alphas_cumprod)
    values = 0.5 * np.log(alphas_cumprod.numpy())
    return lambda t: torch.tensor(np.interp(float(t), knots, values), dtype=torch.float64)


def edm_noise(denoise):
    """The release's EDMModel.forward, net(x / s(t), sigma(t)), behind model_wrapper('x_start')."""
    def noise_fn(y, t):
        alpha = torch.exp(linear_log_alpha(t))
        std = torch.sqrt(1 - alpha**2)
        return (y - alpha * denoise(y / alpha, std / alpha)) / std
    return noise_fn


def release_sample(noise_fn, log_alpha, noise, mu_logit, t_couple, a_diff, c_diff, t_eps):
    """The release's sampling, written after its GeneralizedSolver (theoretical guidance, order N):
    ``noise_fn(y, t)`` is its model_fn (the noise prediction at time t), in VP variables."""
    alpha = lambda t: torch.exp(log_alpha(t))  # noqa: E731
    std = lambda t: torch.sqrt(1 - torch.exp(2 * log_alpha(t)))  # noqa: E731
    lam = lambda t: log_alpha(t) - torch.log(std(t))  # noqa: E731
    mu = torch.sigmoid(mu_logit) * (1 - 2e-5) + 1e-5
    rising = (1 - torch.cumprod(mu, 0)) * (1 - t_eps) + t_eps
    t = torch.cat([rising.new_tensor([t_eps]), rising, rising.new_tensor([1.0])]).flip(0)

    def model_fn(x, n):  # GeneralizedSolver.model_fn: decoupled call, data prediction at the undecoupled t
        return (x - std(t[n]) * noise_fn(x, t[n] + t_couple[n])) / alpha(t[n])

    return release_updates(model_fn, lam, alpha, std, t, noise, a_diff, c_diff)


def stored_student(path):
    """The parameters as the release reads them back (float32 in the file), in float64."""
    stored = [p.double() for p in torch.load(path, weights_only=True)["ema"]["shadow_params"]]
    return stored[0], stored[1], torch.stack(stored[3::2], 1), torch.stack(stored[2::2], 1)


def random_student(nfe, t_eps, scale):
    g = torch.Generator().manual_seed(nfe)
    return (release_logits(nfe, t_eps) + scale * torch.randn(nfe - 1, generator=g, dtype=torch.float64),
            0.02 * scale * torch.randn(nfe, generator=g, dtype=torch.float64),
            0.05 * scale * torch.randn(nfe, nfe, generator=g, dtype=torch.float64),
            0.05 * scale * torch.randn(nfe, nfe, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("nfe,scale", [(5, 1.0), (4, 0.0), (6, 1.0)])
def test_a_release_student_samples_as_the_release_does(gmm, tmp_path, nfe, scale):
    """Trained (random corrections, decoupling and steps) and untrained students, through the
    executor on the gmm teacher, equal the release's update rule written out directly."""
    t_eps = 1e-3
    path = tmp_path / "student.pt"
    write_release_student(path, *random_student(nfe, t_eps, scale))
    solver, loaded_nfe, info = load_release_student(path, gmm, "gs", t_eps=t_eps)
    assert loaded_nfe == nfe and info["t_eps"] == t_eps and info["release_step"] == 10_000
    noise = torch.randn(6, *gmm.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    stats = ExecutionStats()
    ours = execute(solver.table(gmm, nfe), gmm.denoiser(None), noise * gmm.sigma_max, stats=stats)
    theirs = release_sample(edm_noise(lambda x, s: gmm.denoise(x, s, None)), linear_log_alpha, noise,
                            *stored_student(path), t_eps)
    assert stats.nfe == nfe
    assert float(ours.abs().max()) > 0.1  # a real sample, not a degenerate zero
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


class EpsilonTeacher(Teacher):
    """A discrete-time epsilon-prediction 'network' (a smooth function of its input and timestep)
    on Stable Diffusion's 1,000-step scaled-linear schedule, wrapped as gasbench wraps diffusers UNets."""

    name, shape = "eps-toy", (1, 4, 4)
    reference = ReferenceSolver("euler", 10, "logsnr")
    BETAS = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2

    def __init__(self):
        self.time = DiscreteVPSchedule(torch.cumprod(1 - self.BETAS, 0))
        self.sigma_min, self.sigma_max = self.time.sigma_min, self.time.sigma_max

    @staticmethod
    def network(x_vp, timestep):
        return torch.tanh(x_vp) * (1 + timestep / 1000) + 0.1 * torch.sin(timestep / 100)

    def denoise(self, x, sigma, cond):
        sigma = torch.as_tensor(sigma, dtype=torch.float64).reshape(-1).expand(len(x))
        x_vp, timestep = self.time.model_input(x, sigma)
        return self.time.to_denoised(self.network(x_vp, timestep.reshape(-1, *[1] * (x.dim() - 1))), x, sigma)


def test_a_release_student_of_a_discrete_time_teacher_samples_as_the_release_does(tmp_path):
    """The release feeds the network its VP state and timestep 1000 t' - 1 and integrates with log
    alpha interpolated in t; gasbench's discrete-time teacher gets the same input and timestep."""
    teacher, nfe, t_eps = EpsilonTeacher(), 4, 1e-3
    mu_logit, _, a_diff, c_diff = random_student(nfe, t_eps, 0.5)
    path = tmp_path / "student.pt"
    write_release_student(path, mu_logit, torch.tensor([-0.02, 0.015, -0.01, 0.02]), a_diff, c_diff)
    solver, _, _ = load_release_student(path, teacher, "gas", t_eps=t_eps)
    noise = torch.randn(5, *teacher.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    ours = execute(solver.table(teacher, nfe), teacher.denoiser(None), noise * teacher.sigma_max)
    log_alpha = discrete_log_alpha(torch.cumprod(1 - teacher.BETAS, 0))
    theirs = release_sample(lambda y, t: teacher.network(y, 1000 * t - 1), log_alpha, noise, *stored_student(path),
                            t_eps)
    torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-9)


def test_an_imported_student_is_evaluated_by_gasbench_run(gmm, tmp_path):
    from gasbench.runner import RunConfig, run
    from gasbench.solvers.cells import load_cell as load_saved_solver

    path = tmp_path / "hub" / "edm" / "cifar10" / "gas_nfe4.pt"
    path.parent.mkdir(parents=True)
    write_release_student(path, *random_student(4, 1e-3, 1.0))
    results = tmp_path / "results"
    config = RunConfig(teacher="gmm", methods=["gas-release"], nfes=[4], num_samples=8, batch_size=8,
                       results_dir=results, metrics=["rmse"])
    with pytest.raises(GasbenchError, match="gasbench import-release FILE --dataset gmm --kind gas"):
        run(config)
    cell = import_release_student(path, gmm, "gas", t_eps=1e-3, results_dir=results)
    assert cell == results / "gmm" / "gas-release" / "nfe4"
    [record] = run(config)  # rmse is paired: no teacher row
    assert record["method"] == "gas-release" and record["nfe_measured"] == 4
    assert record["training"]["kind"] == "GAS" and len(record["training"]["sha256"]) == 64
    solver, teacher, nfe = load_saved_solver(cell)  # what `gasbench show` reads
    assert solver.name == "gas-release" and nfe == 4
    assert float(solver.params["t_eps"]) == 1e-3


def test_t_eps_comes_from_the_release_config_of_the_hub_folder(gmm, tmp_path):
    path = tmp_path / "edm" / "ffhq" / "student.pt"
    path.parent.mkdir(parents=True)
    write_release_student(path, *random_student(4, 1e-4, 0.0))
    assert load_release_student(path, gmm, "gs")[2]["t_eps"] == RELEASE_STUDENT_T_EPS["ffhq"]
    write_release_student(tmp_path / "student.pt", *random_student(4, 1e-4, 0.0))
    with pytest.raises(GasbenchError, match="give t_eps"):
        load_release_student(tmp_path / "student.pt", gmm, "gs")


@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_unsafe_student_files_are_refused_and_never_run(gmm, tmp_path, container):
    marker, path = tmp_path / "ran", tmp_path / "student.pt"
    blob = {"ema": {"shadow_params": [Payload("posix.system", marker)]}, "step": 1}
    if container == "torch.save":
        torch.save(blob, path)
    else:
        path.write_bytes(pickle.dumps(blob))
    with pytest.raises(GasbenchError, match="refused before anything in it ran") as error:
        load_release_student(path, gmm, "gs", t_eps=1e-3)
    assert "weights_only=False" not in str(error.value)
    assert not marker.exists()


def write_release_dataset(directory, seeds, batch, shape, conditions):
    """generate.py --create_dataset (one <first seed>.pt per batch) then collate.py (batch files in
    sorted(os.listdir) order, pickled as a defaultdict of concatenated tensors and lists)."""
    batches = torch.as_tensor(list(seeds)).tensor_split((len(seeds) - 1) // batch + 1)
    shards = directory / "dataset"
    shards.mkdir()
    for part in batches:
        noise = release_noise(part.tolist(), shape, "cpu")
        images = (0.5 * noise).clamp(-1, 1)
        latents = noise.flip(-1) if conditions != "none" else None
        condition = {"none": None, "labels": torch.as_tensor(part % 1000),
                     "prompts": list(np.array(["a cat on a mat", "two dogs", "ok"])[part.numpy() % 3])}[conditions]
        torch.save({"noise": noise, "latents": latents if latents is not None else [None] * len(part),
                    "images": images, "condition": condition if condition is not None else [None] * len(part)},
                   shards / f"{int(part[0])}.pt")
    data = defaultdict(list)
    for name in sorted(os.listdir(shards)):
        for key, value in torch.load(shards / name, weights_only=False).items():
            data[key] += [value] if isinstance(value, torch.Tensor) else value
    for key, value in data.items():
        data[key] = torch.cat(value) if isinstance(value[0], torch.Tensor) else value
    path = directory / "dataset.pkl"
    with open(path, "wb") as fh:
        pickle.dump(data, fh)
    return path


@pytest.mark.parametrize("conditions", ["none", "labels", "prompts"])
def test_teacher_datasets_load_with_their_seeds(tmp_path, conditions):
    shape = (1, 4, 4)
    path = write_release_dataset(tmp_path, range(100), 8, shape, conditions)
    data = load_release_teacher_data(path, seeds=range(100), batch=8, gpus=1)
    assert len(data) == 100 and sorted(data.seeds.tolist()) == list(range(100))
    assert data.seeds[:3].tolist() == [0, 1, 2] and data.seeds[8] == 16  # batch files in string order: 0, 16, ...
    torch.testing.assert_close(data.noise, release_noise(data.seeds.tolist(), shape, "cpu"), rtol=0, atol=0)
    expected_x0 = data.noise.flip(-1) if conditions != "none" else (0.5 * data.noise).clamp(-1, 1)
    torch.testing.assert_close(data.x0, expected_x0, rtol=0, atol=0)
    if conditions == "labels":
        assert torch.equal(data.cond, data.seeds % 1000) and data.prompts is None
    elif conditions == "prompts":
        assert data.cond is None and data.prompts[8] == ["a cat on a mat", "two dogs", "ok"][16 % 3]
    else:
        assert data.cond is None and data.prompts is None
    assert "string order" in data.info["seed_order"] and "50,000-99,999" in data.info["seed_convention"]


def test_teacher_data_becomes_training_pairs_only_for_a_teacher_with_the_releases_start(gmm, tmp_path):
    path = write_release_dataset(tmp_path, range(20), 8, gmm.shape, "none")
    data = load_release_teacher_data(path, seeds=range(20), batch=8)
    with pytest.raises(GasbenchError, match="sigma = 152.2"):
        data.training_pairs(gmm, 12, 4)
    matching = GaussianMixtureTeacher(gmm.means, gmm.std)
    matching.sigma_max = 152.16697  # sigma(t = 1) of the release's VP schedule
    train, validation = data.training_pairs(matching, 12, 4)
    assert torch.equal(train["x0"], data.x0[:12]) and torch.equal(validation["noise"], data.noise[16:])


def test_unsafe_teacher_datasets_are_refused_and_never_run(tmp_path):
    marker, path = tmp_path / "ran", tmp_path / "dataset.pkl"
    data = defaultdict(list, {"noise": torch.zeros(2, 1, 2, 2), "images": Payload("posix.system", marker)})
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(GasbenchError, match="posix.system.*Nothing from it was executed"):
        load_release_teacher_data(path)
    assert not marker.exists()
    buffer = io.BytesIO()
    pickle.dump({"noise": torch.zeros(1)}, buffer)
    path.write_bytes(buffer.getvalue())
    with pytest.raises(GasbenchError, match="lacks condition, images, latents"):
        load_release_teacher_data(path)


def test_import_release_command(tmp_path, monkeypatch, capsys):
    from helpers import gasbench

    path = tmp_path / "student.pt"
    write_release_student(path, *random_student(4, 1e-3, 1.0))
    code, out, err = gasbench(monkeypatch, capsys, "import-release", path, "-d", "gmm", "--kind", "gs",
                              "--t-eps", "1e-3", "--results-dir", tmp_path / "results")
    assert code == 0 and "gasbench run -d gmm -m gs-release --nfe 4" in out.replace("\n", " ")
    assert (tmp_path / "results" / "gmm" / "gs-release" / "nfe4" / "solver.json").is_file()
    code, _, err = gasbench(monkeypatch, capsys, "import-release", tmp_path / "absent.pt", "-d", "gmm")
    assert code != 0 and "absent.pt" in err and "Traceback" not in err
