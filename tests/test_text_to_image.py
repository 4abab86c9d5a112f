"""SDXL, SD3 and Flux pipelines as teachers: tiny random pipelines saved as diffusers folders,
loaded through ``diffusers:<folder>`` and checked against the pipelines' own Euler samplers from
the same noise on the same grid."""

import json

import numpy as np
import pytest
import torch
from tiny_pipelines import save_flux, save_sd3, save_sdxl

from gasbench.core.errors import GasbenchError
from gasbench.solvers.executor import execute, trace
from gasbench.solvers.handcrafted import euler
from gasbench.teachers.diffusers_teacher import DiffusersTeacher
from gasbench.teachers.text_to_image import TextToImageTeacher

SIZE = 16  # pixels: 8x8 latents for SDXL and SD3, 8x8 (16 packed tokens) for Flux


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory):
    root = tmp_path_factory.mktemp("t2i")
    return {"sdxl": save_sdxl(root / "tiny-sdxl"), "sd3": save_sd3(root / "tiny-sd3"), "flux": save_flux(root / "tiny-flux")}


def teacher_of(folder, **options) -> TextToImageTeacher:
    query = "&".join(f"{k}={v}" for k, v in {"size": SIZE, **options}.items())
    return DiffusersTeacher.from_pretrained(f"{folder}?{query}")


def our_euler(teacher, sigmas, x_T, cond):
    with torch.no_grad():
        return execute(trace(euler, sigmas), teacher.denoiser(cond), x_T)


def relative(a, b):
    return float((a - b).norm() / b.norm())


def seeds_and_noise(teacher, seeds=(3, 70)):
    cond = teacher.conditions([torch.Generator().manual_seed(s) for s in seeds])
    eps = torch.randn(len(seeds), *teacher.shape, generator=torch.Generator().manual_seed(0))
    return cond, eps


def test_sdxl_matches_its_pipelines_euler(pipelines):
    """Both encoders, the pooled embedding, the size ids and CFG 5 against StableDiffusionXLPipeline
    with its EulerDiscreteScheduler (sigma-space Euler, ending at sigma 0) from the same latents."""
    from diffusers import StableDiffusionXLPipeline

    teacher = teacher_of(pipelines["sdxl"])
    assert (teacher.shape, teacher.guidance_scale, teacher.schedule.kind) == ((4, 8, 8), 5.0, "discrete-vp")
    assert teacher.describe()["time_ids"] == [16, 16, 0, 0, 16, 16]
    cond, eps = seeds_and_noise(teacher)
    pipe = StableDiffusionXLPipeline.from_pretrained(pipelines["sdxl"])
    expected = pipe(teacher.prompts_for(cond), latents=eps, num_inference_steps=8, height=SIZE, width=SIZE,
                    output_type="latent").images.double()
    sigmas = pipe.scheduler.sigmas.double()  # the grid of that call, final 0 included
    ours = our_euler(teacher, sigmas, eps.double() * pipe.scheduler.init_noise_sigma, cond)
    assert relative(ours, expected) < 1e-4
    assert relative(our_euler(teacher, sigmas, eps.double() * pipe.scheduler.init_noise_sigma, cond + 1), expected) > 1e-2


def flow_run(teacher, pipe, steps, cond, eps, **call):
    """(ours, the pipeline's) on the pipeline's grid for unshifted times u = linspace(0.999, 0.001):
    the pipeline shifts them itself (static or dynamic), and starts from our x_T in its x_t = (1 - t) x."""
    u = np.linspace(0.999, 0.001, steps)
    t = teacher.schedule.sigma(torch.tensor(u)) / (1 + teacher.schedule.sigma(torch.tensor(u)))
    sigmas = torch.cat([t / (1 - t), torch.zeros(1, dtype=torch.float64)])
    x_T = eps.double() * sigmas[0]
    latents = (x_T * (1 - t[0])).float()
    out = pipe(teacher.prompts_for(cond), latents=latents, sigmas=list(u), num_inference_steps=steps, height=SIZE,
               width=SIZE, output_type="latent", **call).images.double()
    return our_euler(teacher, sigmas, x_T, cond), out, pipe.scheduler.sigmas.double()[:-1], t


def test_sd3_matches_its_pipelines_flow_euler(pipelines):
    from diffusers import StableDiffusion3Pipeline

    teacher = teacher_of(pipelines["sd3"])
    assert (teacher.shape, teacher.guidance_scale, teacher.schedule.shift) == ((16, 8, 8), 7.0, 3.0)
    cond, eps = seeds_and_noise(teacher)
    pipe = StableDiffusion3Pipeline.from_pretrained(pipelines["sd3"])
    ours, expected, pipeline_t, our_t = flow_run(teacher, pipe, 8, cond, eps)
    assert torch.allclose(pipeline_t, our_t, atol=1e-6)  # the same shifted grid
    assert relative(ours, expected) < 1e-4
    assert relative(our_euler(teacher, torch.cat([our_t / (1 - our_t), torch.zeros(1, dtype=torch.float64)]),
                              eps.double() * our_t[0] / (1 - our_t[0]), cond + 1), expected) > 1e-2


def test_flux_matches_its_pipeline_with_the_dynamic_shift_and_guidance_embedding(pipelines):
    """Packed latents, rotary ids, the guidance embedding (3.5, one call per step) and the shift
    resolved for 16 latent tokens, against FluxPipeline, which resolves mu itself."""
    from diffusers import FluxPipeline
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    teacher = teacher_of(pipelines["flux"])
    record = teacher.describe()
    assert (teacher.shape, teacher.guidance_scale, teacher.embedded_guidance) == ((16, 8, 8), 1.0, 3.5)
    mu = calculate_shift(16, 256, 4096, 0.5, 1.15)
    assert record["schedule"]["dynamic_shift"] == {"mu": mu, "image_seq_len": 16, "time_shift_type": "exponential"}
    assert teacher.schedule.shift == pytest.approx(np.exp(mu))
    cond, eps = seeds_and_noise(teacher)
    pipe = FluxPipeline.from_pretrained(pipelines["flux"])
    pack = lambda x: pipe._pack_latents(x, len(x), *x.shape[1:])  # noqa: E731
    unpack = lambda x: pipe._unpack_latents(x, SIZE, SIZE, pipe.vae_scale_factor)  # noqa: E731
    u = np.linspace(0.999, 0.001, 6)
    t = teacher.schedule.sigma(torch.tensor(u)) / (1 + teacher.schedule.sigma(torch.tensor(u)))
    sigmas = torch.cat([t / (1 - t), torch.zeros(1, dtype=torch.float64)])
    x_T = eps.double() * sigmas[0]

    def pipeline(guidance):
        return unpack(pipe(teacher.prompts_for(cond), latents=pack((x_T * (1 - t[0])).float()), sigmas=list(u),
                           num_inference_steps=6, height=SIZE, width=SIZE, guidance_scale=guidance,
                           output_type="latent").images).double()

    expected = pipeline(3.5)
    assert torch.allclose(pipe.scheduler.sigmas.double()[:-1], t, atol=1e-6)
    ours = our_euler(teacher, sigmas, x_T, cond)
    assert relative(ours, expected) < 1e-4
    assert relative(ours, pipeline(1.0)) > 1e-3  # the embedding is seen
    # one network call per step: no CFG batch
    calls = []
    teacher.model.register_forward_hook(lambda module, inputs, kwargs_out=None: calls.append(1))
    our_euler(teacher, sigmas, x_T, cond)
    assert len(calls) == 6
    assert teacher_of(pipelines["flux"], guidance=2).embedded_guidance == 2.0


def test_dynamic_shift_follows_the_resolution(pipelines):
    small, large = teacher_of(pipelines["flux"]), DiffusersTeacher.from_pretrained(f"{pipelines['flux']}?size=64x32")
    assert large.shape == (16, 32, 16) and large.name.endswith("-64x32")
    assert large.schedule.dynamic["image_seq_len"] == 128 and large.schedule.shift > small.schedule.shift


def test_clear_messages(pipelines, tmp_path):
    with pytest.raises(GasbenchError, match="HxW or N"):
        DiffusersTeacher.from_pretrained(f"{pipelines['sd3']}?size=big")
    with pytest.raises(GasbenchError, match="options are"):
        DiffusersTeacher.from_pretrained(f"{pipelines['sd3']}?steps=4")
    schnell = save_flux(tmp_path / "tiny-schnell", guidance_embeds=False)
    assert teacher_of(schnell).embedded_guidance is None
    with pytest.raises(GasbenchError, match="without a guidance embedding"):
        teacher_of(schnell, guidance=3)
    index = json.loads((pipelines["sd3"] / "model_index.json").read_text())
    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({**index, "_class_name": "StableCascadePriorPipeline"}))
    with pytest.raises(GasbenchError, match="StableCascadePriorPipeline.*text-to-image teachers are"):
        DiffusersTeacher.from_pretrained(str(other))


# SD3 and Flux run T5 on their 256 / 512-token captions: about a minute each on one core
@pytest.mark.parametrize("kind", ["sdxl", pytest.param("sd3", marks=pytest.mark.slow),
                                  pytest.param("flux", marks=pytest.mark.slow)])
def test_gasbench_run_on_each_pipeline(pipelines, kind, tmp_path, monkeypatch, capsys):
    """The user's route, with GS on a short fit: records for euler, dpmpp3m and gs, the teacher's
    description (dynamic shift, embedded guidance) in them, and every cell at NFE 4."""
    from helpers import gasbench

    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path / "home"))
    results = tmp_path / "results"
    code, out, err = gasbench(monkeypatch, capsys, "run", "-d", f"diffusers:{pipelines[kind]}?size={SIZE}",
                              "-m", "euler,dpmpp3m,gs", "--nfe", "4", "-n", "8", "--metrics", "rmse",
                              "--solver-arg", "iterations=3", "--solver-arg", "train_size=8", "--jobs", "1",
                              "--results-dir", results)
    assert code == 0, err
    records = {p.parts[-3]: json.loads(p.read_text()) for p in results.glob("*/*/nfe4/metrics.json")}
    assert set(records) == {"euler", "dpmpp3m", "gs+iterations=3+train_size=8"}
    for record in records.values():
        assert record["nfe_measured"] == 4 and 0 < record["metrics"]["rmse"] < 10
    teacher = records["euler"]["teacher"]
    assert teacher["size"] == [SIZE, SIZE] and teacher["pipeline"].startswith(("StableDiffusion", "Flux"))
    if kind == "flux":
        assert teacher["embedded_guidance"] == 3.5 and teacher["schedule"]["dynamic_shift"]["image_seq_len"] == 16


@pytest.mark.parametrize("kind", ["sdxl", "sd3", "flux"])
def test_exported_scheduler_runs_in_the_pipeline(pipelines, kind):
    """`gasbench export --to diffusers` for these teachers: the pipeline with the exported
    DPM-Solver++(3M) table returns gasbench's own sample (the pipeline's latents start at our x_T
    in its variables; Flux passes its default grid and shift, which the table replaces)."""
    from diffusers import DiffusionPipeline

    from gasbench.core.registry import SOLVERS
    from gasbench.diffusers_export import GasbenchScheduler

    teacher = teacher_of(pipelines[kind])
    table = SOLVERS.get("dpmpp3m")().table(teacher, 4)
    scheduler = GasbenchScheduler.from_table(table, teacher, {"solver": "dpmpp3m"})
    cond, eps = seeds_and_noise(teacher)
    x_T = eps.double() * teacher.sigma_max
    with torch.no_grad():
        ours = execute(table, teacher.denoiser(cond), x_T)
    pipe = DiffusionPipeline.from_pretrained(pipelines[kind])
    pipe.scheduler = scheduler
    latents = (eps * scheduler.init_noise_sigma).float()
    guidance = teacher.embedded_guidance or teacher.guidance_scale
    if kind == "sdxl":  # the pipeline multiplies its latents by init_noise_sigma itself
        latents = eps.float()
    if kind == "flux":
        latents = pipe._pack_latents(latents, len(latents), *latents.shape[1:])
    out = pipe(teacher.prompts_for(cond), latents=latents, num_inference_steps=4, height=SIZE, width=SIZE,
               guidance_scale=guidance, output_type="latent").images
    if kind == "flux":
        out = pipe._unpack_latents(out, SIZE, SIZE, pipe.vae_scale_factor)
    assert relative(ours, out.double()) < 1e-4
    assert scheduler.config.source["size"] == [SIZE, SIZE]
