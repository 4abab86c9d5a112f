"""gasbench export --to diffusers: a solver's Eq. 13 table as a diffusers scheduler, run in DDPMPipeline
(and in a Stable-Diffusion-style loop) on tiny random networks and compared with gasbench's own solve
of the same table from the same noise."""

import json

import pytest
import torch
from diffusers import DDPMPipeline, DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor

from gasbench.diffusers_export import GasbenchScheduler, export_cell
from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.solvers.executor import SolverTable, execute
from gasbench.teachers.diffusers_teacher import DiffusersTeacher
from helpers import SCHEDULERS, short_fit, tiny_unet

NFE = 4
BATCH = 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> (DDPMPipeline folder, its teacher): the same tiny UNet under each training schedule."""
    root, unet, out = tmp_path_factory.mktemp("export"), tiny_unet(), {}
    for kind, scheduler in SCHEDULERS.items():
        DDPMPipeline(unet=unet, scheduler=scheduler()).save_pretrained(root / kind)
        out[kind] = root / kind, DiffusersTeacher.from_pretrained(str(root / kind))
    return out


@pytest.fixture(scope="module")
def cells(models, tmp_path_factory):
    """(kind, method) -> (cell directory, solver) for eps and v models: dpmpp3m as `gasbench run` records
    a handcrafted cell (metrics.json naming the solver and the teacher's folder), and a GS fit with a large
    learning rate, so its steps, decoupling and corrections move, saved as `gasbench run` saves it."""
    out = {}
    for kind in ("vp-epsilon", "vp-v"):
        teacher = models[kind][1]
        dpmpp3m = SOLVERS.get("dpmpp3m")()
        cell = tmp_path_factory.mktemp(f"{kind}-dpmpp3m")
        record = {"solver": {"name": "dpmpp3m", "learned": False, **dpmpp3m.resolved_config(teacher)},
                  "teacher": teacher.describe(), "nfe": NFE}
        (cell / "metrics.json").write_text(json.dumps(record))
        out[kind, "dpmpp3m"] = cell, dpmpp3m
        gs = short_fit("gs", teacher, NFE, iterations=6, lr=0.05)
        cell = tmp_path_factory.mktemp(f"{kind}-gs")
        gs.save_state(cell, teacher, NFE)
        out[kind, "gs"] = cell, gs
    return out


def relative_error(ours, expected):
    return float((ours.double() - expected).norm() / expected.norm())


def run_ddpm_pipeline(folder, scheduler_dir, shape, seed=0):
    """DDPMPipeline with the exported scheduler: (its images, the raw sample of its last step, the x_T it
    solved from). It feeds its unit noise to the network unscaled, so x_T = noise / init_noise_sigma * sigma_max."""
    pipe = DDPMPipeline.from_pretrained(folder)
    pipe.scheduler = GasbenchScheduler.from_pretrained(scheduler_dir)
    pipe.set_progress_bar_config(disable=True)
    outputs, step = [], pipe.scheduler.step

    def recorded_step(*args, **kwargs):
        out = step(*args, **kwargs)
        outputs.append(out.prev_sample)
        return out

    pipe.scheduler.step = recorded_step
    with torch.no_grad():
        images = pipe(batch_size=BATCH, generator=torch.Generator().manual_seed(seed), num_inference_steps=NFE,
                      output_type="pt").images
    assert len(outputs) == NFE
    noise = randn_tensor((BATCH, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float32)
    return images, outputs[-1], noise.double() / pipe.scheduler.init_noise_sigma * pipe.scheduler.config.sigma_max


def gasbench_solve(table, teacher, x_T):
    with torch.no_grad():
        return execute(table, teacher.denoiser(None), x_T)


@pytest.mark.parametrize("method", ["dpmpp3m", "gs"])
@pytest.mark.parametrize("kind", ["vp-epsilon", "vp-v"])
def test_ddpm_pipeline_with_the_exported_scheduler_is_gasbench(models, cells, tmp_path, kind, method):
    """`gasbench export` of a cell, loaded into DDPMPipeline, gives gasbench's sample of the cell's table from
    the pipeline's x_T. (The random network makes the eps model's samples reach hundreds, hence a relative
    error for them; float32 network inputs, float64 solver arithmetic.)"""
    folder, teacher = models[kind]
    cell, solver = cells[kind, method]
    # a learned cell's solver.json names the teacher only; a record (metrics.json) also says its folder
    exported = export_cell(cell, tmp_path / "scheduler", teacher=f"diffusers:{folder}" if method == "gs" else None)
    images, final, x_T = run_ddpm_pipeline(folder, tmp_path / "scheduler", teacher.shape)
    expected = gasbench_solve(solver.table(teacher, NFE), teacher, x_T)
    assert relative_error(final, expected) < 1e-6
    torch.testing.assert_close(images, teacher.decode(expected), rtol=0, atol=1e-4)
    assert exported.config.source["solver"] == method and exported.config.source["nfe"] == NFE


@pytest.mark.parametrize("kind,method", [("vp-epsilon", "gs"), ("vp-v", "gs"), ("edm", "dpmpp3m"), ("flow", "dpmpp3m")])
def test_pipelines_that_scale_the_noise_start_at_gasbench_x_T(models, cells, kind, method):
    """A Stable-Diffusion-style loop (noise * init_noise_sigma, scale_model_input, network, step) solves
    from gasbench's own x_T = sigma_max * noise, for VP, EDM and flow-matching models; GS evaluates x_T
    at its decoupled sigma, which init_noise_sigma accounts for."""
    folder, teacher = models[kind]
    solver = cells[kind, method][1] if (kind, method) in cells else SOLVERS.get(method)()
    table = solver.table(teacher, NFE)
    scheduler = GasbenchScheduler.from_table(table, teacher)
    noise = torch.randn(BATCH, *teacher.shape, generator=torch.Generator().manual_seed(1))
    latents = noise * scheduler.init_noise_sigma
    scheduler.set_timesteps(NFE)
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = teacher.model(scheduler.scale_model_input(latents, t), t).sample
            latents = scheduler.step(output, t, latents, return_dict=False)[0]
    expected = gasbench_solve(table, teacher, noise.double() * teacher.sigma_max)
    assert relative_error(latents, expected) < 1e-6


def test_learned_decoupled_steps_reach_the_network(models, cells, tmp_path):
    """The GS cell is really learned and decoupled (its evaluation sigmas are off its integration
    grid), and a scheduler that fed the network the integration sigmas would miss gasbench's sample."""
    folder, teacher = models["vp-v"]
    solver = cells["vp-v", "gs"][1]
    table = solver.table(teacher, NFE)
    initial = solver.table_from(solver.parameters_for(teacher, NFE), teacher, NFE)
    grid = solver.integration_sigmas(solver.params, teacher)
    assert (table.sigmas / grid[:-1] - 1).abs().max() > 1e-2
    assert (table.c - initial.c).abs().max() > 1e-2 and (table.sigmas / initial.sigmas - 1).abs().max() > 1e-2
    coupled = SolverTable(table.a, table.c, grid[:-1], table.sigma_final)
    GasbenchScheduler.from_table(coupled, teacher).save_pretrained(tmp_path)
    _, final, x_T = run_ddpm_pipeline(folder, tmp_path, teacher.shape)
    expected = gasbench_solve(table, teacher, x_T)
    assert relative_error(final, expected) > 1e-3


def test_what_cannot_be_exported_gives_one_message(models, cells, gmm_teacher, tmp_path):
    folder, teacher = models["vp-epsilon"]
    dlms = short_fit("dlms", teacher, NFE, iterations=0)  # its saved state, as `gasbench run` writes it
    dlms.save_state(tmp_path / "dlms", teacher, NFE)
    with pytest.raises(GasbenchError, match="dlms chooses its steps and coefficients per sample"):
        export_cell(tmp_path / "dlms", tmp_path / "out", teacher=f"diffusers:{folder}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(GasbenchError, match="not a gasbench result cell.*results/<teacher>/gs/nfe4"):
        export_cell(tmp_path / "empty", tmp_path / "out")
    with pytest.raises(GasbenchError, match="--teacher diffusers:<folder or hub id>"):
        export_cell(cells["vp-epsilon", "gs"][0], tmp_path / "out")
    with pytest.raises(GasbenchError, match="was solved with teacher 'diffusers-vp-epsilon'"):
        export_cell(cells["vp-epsilon", "gs"][0], tmp_path / "out", teacher=f"diffusers:{models['vp-v'][0]}")
    with pytest.raises(GasbenchError, match="not a diffusers model"):
        GasbenchScheduler.from_table(SOLVERS.get("dpmpp3m")().table(gmm_teacher, NFE), gmm_teacher)
    assert not (tmp_path / "out").exists()


def test_scheduler_refuses_a_solve_it_cannot_replay(models):
    teacher = models["vp-epsilon"][1]
    table = SOLVERS.get("dpmpp3m")().table(teacher, NFE)
    scheduler = GasbenchScheduler.from_table(table, teacher, {"solver": "dpmpp3m"})
    with pytest.raises(GasbenchError, match="dpmpp3m at NFE 4; call the pipeline with num_inference_steps=4"):
        scheduler.set_timesteps(1000)  # DDPMPipeline's default
    x = torch.zeros(1, *teacher.shape)
    with pytest.raises(GasbenchError, match="step 0 .* in order"):  # an image-to-image start
        scheduler.step(x, scheduler.timesteps[1], x)
    with pytest.raises(GasbenchError, match="deterministic"):
        scheduler.step(x, scheduler.timesteps[0], x, eta=1.0)
    for t in scheduler.timesteps:
        x = scheduler.step(x, t, x).prev_sample
    with pytest.raises(GasbenchError, match="call set_timesteps"):
        scheduler.step(x, scheduler.timesteps[0], x)


def test_export_command_and_a_saved_pipeline(models, cells, tmp_path, monkeypatch, capsys):
    """The Typer command writes the scheduler and says how to use it; a pipeline saved with it reloads
    it by its module (diffusers imports gasbench.diffusers_export)."""
    from helpers import gasbench

    cell = cells["vp-v", "dpmpp3m"][0]
    code, out, err = gasbench(monkeypatch, capsys, "export", cell, tmp_path / "scheduler")
    assert code == 0, err
    out = " ".join(out.split())
    assert "dpmpp3m for teacher 'diffusers-vp-v' at NFE 4" in out and "num_inference_steps=4" in out
    code, _, err = gasbench(monkeypatch, capsys, "export", cell, tmp_path / "other", "--to", "onnx")
    assert code != 0 and "only export format is diffusers" in err and "Traceback" not in err

    pipe = DDPMPipeline.from_pretrained(models["vp-v"][0])
    pipe.scheduler = GasbenchScheduler.from_pretrained(tmp_path / "scheduler")
    pipe.save_pretrained(tmp_path / "pipeline")
    reloaded = DiffusionPipeline.from_pretrained(tmp_path / "pipeline").scheduler
    assert isinstance(reloaded, GasbenchScheduler) and reloaded.config.a == pipe.scheduler.config.a
