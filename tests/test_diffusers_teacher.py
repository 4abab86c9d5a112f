"""Diffusers models as teachers: tiny random networks saved as pipeline folders, loaded with
DiffusersTeacher.from_pretrained and checked against diffusers' own schedulers and pipelines."""

import json

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMPipeline,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    DPMSolverMultistepScheduler,
    EDMDPMSolverMultistepScheduler,
    EDMEulerScheduler,
    FlowMatchEulerDiscreteScheduler,
)
from helpers import SCHEDULERS, tiny_unet
from tiny_pipelines import tiny_text_config, tiny_tokenizer, tiny_vae

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.solvers.executor import execute, trace
from gasbench.solvers.handcrafted import euler
from gasbench.solvers.schedules import make_sigmas
from gasbench.teachers.diffusers_teacher import DiffusersTeacher, teacher_name

# the same network read with a wrong conversion: what a parity test must be able to see
WRONG = {"vp-epsilon": {"prediction_type": "v_prediction"}, "vp-v": {"prediction_type": "epsilon"},
         "edm": {"prediction_type": "v_prediction"}, "flow": {"num_train_timesteps": 500}}


@pytest.fixture(autouse=True)
def _one_thread():
    """The networks here are tiny: a second thread only adds synchronisation (several times slower
    on a busy two-core machine)."""
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """One DDPMPipeline-style folder (unet + scheduler) per noise schedule, the same network in each."""
    root, unet = tmp_path_factory.mktemp("diffusers"), tiny_unet()
    out = {}
    for kind, scheduler in SCHEDULERS.items():
        DDPMPipeline(unet=unet, scheduler=scheduler()).save_pretrained(root / kind)
        out[kind] = root / kind
    return out


@pytest.fixture(scope="module")
def dit_folder(tmp_path_factory):
    """A class-conditional latent DiT (learned sigma: 8 output channels for 4 latent ones) with a tiny
    VAE; 1000 classes because DiTPipeline hard-codes label 1000 as the null label."""
    torch.manual_seed(2)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=1,
                                sample_size=8, patch_size=2, num_embeds_ada_norm=1000, norm_num_groups=4)
    folder = tmp_path_factory.mktemp("dit") / "DiT-tiny"
    scheduler = DDIMScheduler(clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    DiTPipeline(transformer=dit, vae=tiny_vae(), scheduler=scheduler).save_pretrained(folder)
    return folder


def noise(shape, seed=0, batch=3):
    return torch.randn(batch, *shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def scheduler_loop(folder, scheduler, x, timesteps=None):
    """diffusers' sampling loop: scale_model_input (flow schedulers have none), the network, scheduler.step."""
    model = DiffusersTeacher.from_pretrained(str(folder)).model
    scale_input = getattr(scheduler, "scale_model_input", lambda x, t: x)
    with torch.no_grad():
        for t in scheduler.timesteps if timesteps is None else timesteps:
            out = model(scale_input(x, t), t).sample
            x = scheduler.step(out, t, x).prev_sample
    return x.double()


def vp_grid(config, steps):
    """A DDIM scheduler (eta = 0: Euler in sigma-space) on trailing timesteps ending at alphabar_0
    (sigma_min), and the sigmas of that grid."""
    scheduler = DDIMScheduler.from_config(config, clip_sample=False, set_alpha_to_one=False, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    k = torch.cat([scheduler.timesteps, torch.tensor([0])])
    return scheduler, ((1 - abar[k]) / abar[k]).sqrt()


def grids(kind, folder, steps):
    """(our sigmas, a scheduler set up on the same grid, the factor from our x_T to the scheduler's,
    the map from our final state to the scheduler's space) for ``steps`` steps: DDIM (VP), EDMEuler,
    or FlowMatchEuler on the unshifted times u, t = shift(u)."""
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    if kind.startswith("vp"):
        scheduler, sigmas = vp_grid(config, steps)
        # VP space: x_vp = x_edm / sqrt(1 + sigma^2)
        return sigmas, scheduler, 1 / (1 + sigmas[0] ** 2).sqrt(), lambda x: x / (1 + sigmas[-1] ** 2).sqrt()
    if kind == "edm":
        scheduler = EDMEulerScheduler.from_config(config)
        scheduler.set_timesteps(steps)
        return scheduler.sigmas.double(), scheduler, 1.0, lambda x: x
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
    scheduler.set_timesteps(sigmas=np.linspace(0.999, 0.001, steps))
    t = scheduler.sigmas.double()
    return t / (1 - t), scheduler, 1 - t[0], lambda x: x  # x_t = (1 - t) x_edm


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_euler_on_the_scheduler_grid_matches_the_scheduler(folders, kind):
    """Euler in sigma-space through the teacher is DDIM / EDM-Euler / flow Euler on the same grid: this
    pins the input scaling, timestep and prediction conversion of each schedule to float32 rounding."""
    teacher = DiffusersTeacher.from_pretrained(str(folders[kind]))
    # 20 divides 1000: DDIM steps from timestep t to t - 1000 // steps, the next grid point only then
    sigmas, scheduler, vp_scale, to_scheduler_space = grids(kind, folders[kind], 20)
    eps = noise(teacher.shape)
    x_T = eps * sigmas[0]
    expected = scheduler_loop(folders[kind], scheduler, (x_T * vp_scale).float())
    table = trace(euler, sigmas)
    with torch.no_grad():
        ours = to_scheduler_space(execute(table, teacher.denoiser(None), x_T))
    assert (ours - expected).norm() / expected.norm() < 1e-5  # float32 network, float64 solver

    # a wrong conversion of the same network is seen at 100x the tolerance (flow models'
    # outputs depend least on the timestep, the only thing the wrong timestep scale changes)
    config = json.loads((folders[kind] / "scheduler" / "scheduler_config.json").read_text())
    wrong = DiffusersTeacher("wrong", teacher.model, {**config, **WRONG[kind]}, teacher.shape)
    with torch.no_grad():
        mismatch = to_scheduler_space(execute(table, wrong.denoiser(None), x_T))
    assert (mismatch - expected).norm() / expected.norm() > 1e-3


def accurate_scheduler(kind, config, steps):
    """A high-order diffusers scheduler of the model's own family ending at the teacher's sigma_min
    (flow: FlowMatchEuler, the flow pipelines' solver, stopped before its final jump to t = 0)."""
    if kind.startswith("vp"):
        scheduler = DPMSolverMultistepScheduler.from_config(config, solver_order=3, final_sigmas_type="sigma_min",
                                                            timestep_spacing="trailing")
    elif kind == "edm":
        # its last step with final_sigmas_type="sigma_min" is from sigma_min to itself (h = 0, NaN):
        # end at zero and stop one step early instead
        scheduler = EDMDPMSolverMultistepScheduler.from_config(config, solver_order=3)
        scheduler.set_timesteps(steps)
        return scheduler, scheduler.timesteps[:-1]
    else:
        scheduler = FlowMatchEulerDiscreteScheduler.from_config(config)
        scheduler.set_timesteps(sigmas=np.linspace(0.999, 0.001, steps))
        return scheduler, scheduler.timesteps[:-1]
    scheduler.set_timesteps(steps)
    return scheduler, None


def solve_reference(teacher, eps, nfe, cond=None):
    ref = teacher.reference
    table = SOLVERS.get(ref.solver)(schedule=ref.schedule, **ref.options).table(teacher, nfe)
    with torch.no_grad():
        return execute(table, teacher.denoiser(cond), eps * teacher.sigma_max)


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_reference_solver_agrees_with_the_diffusers_scheduler(folders, kind):
    """The teacher's reference solver (UniPC-3 on logSNR) at NFE 200 and a diffusers scheduler at 250
    steps reach the same sample from the same noise.

    Random weights make D oscillate in the timestep (the sinusoidal embedding has frequencies up to
    one radian per training step), so both solvers converge slowly where the network's timestep
    runs over 0..999 (VP, flow): the two differ by 5e-4 to 1e-3 there and by 5e-5 for EDM (whose
    c_noise = log(sigma) / 4 spans a few units). 3e-3 keeps a 3x margin; reading the network with
    the wrong prediction type is off by 0.7 or more. (Flow has one prediction type; its timestep
    scale is pinned by the Euler test above.)
    """
    teacher = DiffusersTeacher.from_pretrained(str(folders[kind]))
    config = json.loads((folders[kind] / "scheduler" / "scheduler_config.json").read_text())
    assert (teacher.reference.solver, teacher.reference.schedule, teacher.reference.options) == ("unipc", "logsnr", {"order": 3})
    eps = noise(teacher.shape, seed=1)
    sigma_max, sigma_min = teacher.sigma_max, teacher.sigma_min
    if kind.startswith("vp"):  # VP space: x_vp = x / sqrt(1 + sigma^2)
        start, to_scheduler_space = eps * sigma_max / (1 + sigma_max**2) ** 0.5, lambda x: x / (1 + sigma_min**2) ** 0.5
    elif kind == "edm":
        start, to_scheduler_space = eps * sigma_max, lambda x: x
    else:  # x_t = x / (1 + sigma)
        start, to_scheduler_space = eps * sigma_max / (1 + sigma_max), lambda x: x / (1 + sigma_min)
    scheduler, timesteps = accurate_scheduler(kind, config, 250)
    expected = scheduler_loop(folders[kind], scheduler, start.float(), timesteps)
    ours = to_scheduler_space(solve_reference(teacher, eps, 200))
    assert (ours - expected).norm() / expected.norm() < 3e-3
    if kind != "flow":
        wrong = DiffusersTeacher("wrong", teacher.model, {**config, **WRONG[kind]}, teacher.shape)
        mismatch = to_scheduler_space(solve_reference(wrong, eps, 200))
        assert (mismatch - expected).norm() / expected.norm() > 0.5


def euler_from_vp_noise(teacher, sigmas, eps_vp, cond):
    """Euler on ``sigmas`` from the pipelines' unit VP noise, returned in VP space."""
    x_T = eps_vp.double() * (1 + sigmas[0] ** 2).sqrt()
    with torch.no_grad():
        return execute(trace(euler, sigmas), teacher.denoiser(cond), x_T) / (1 + sigmas[-1] ** 2).sqrt()


def test_dit_with_guidance_and_vae_matches_the_pipeline(dit_folder):
    """Class labels, the null label, CFG at DiTPipeline's default scale 4, learned-sigma outputs and
    the VAE decode, against DiTPipeline itself from the same per-sample noise."""
    teacher = DiffusersTeacher.from_pretrained(str(dit_folder))
    assert (teacher.name, teacher.shape, teacher.num_classes, teacher.guidance_scale) == ("diffusers-DiT-tiny", (4, 8, 8), 1000, 4.0)
    assert teacher.latent_scale == 0.18215 and teacher.describe()["spec"] == str(dit_folder)
    seeds, labels = (3, 4), torch.tensor([2, 7])
    eps = torch.stack([torch.randn(teacher.shape, generator=torch.Generator().manual_seed(s)) for s in seeds])
    pipe = DiTPipeline.from_pretrained(dit_folder)
    expected = pipe(class_labels=labels.tolist(), generator=[torch.Generator().manual_seed(s) for s in seeds],
                    num_inference_steps=20, output_type="pt").images
    _, sigmas = vp_grid(pipe.scheduler.config, 20)
    images = teacher.decode(euler_from_vp_noise(teacher, sigmas, eps, labels))
    assert images.shape == (2, 3, 16, 16)
    assert (images - expected).abs().max() < 1e-4
    unguided = DiffusersTeacher.from_pretrained(f"{dit_folder}?guidance=1")
    assert unguided.name == "diffusers-DiT-tiny-cfg1"
    assert (unguided.decode(euler_from_vp_noise(unguided, sigmas, eps, labels)) - expected).abs().max() > 1e-2


def test_conditions_follow_the_seed_generators(dit_folder):
    teacher = DiffusersTeacher.from_pretrained(str(dit_folder))
    first = teacher.conditions([torch.Generator().manual_seed(s) for s in range(8)])
    again = teacher.conditions([torch.Generator().manual_seed(s) for s in (5, 6, 7)])
    assert first.dtype == torch.int64 and torch.equal(first[5:], again) and int(first.max()) < 1000


def test_features_are_the_bottleneck_of_the_same_call(folders, dit_folder):
    unet = DiffusersTeacher.from_pretrained(str(folders["vp-epsilon"]))
    x, sigma = noise(unet.shape) * 3, torch.tensor(3.0, dtype=torch.float64)
    with torch.no_grad():
        denoised, features = unet.denoise_with_features(x, sigma, None)
        assert torch.allclose(denoised, unet.denoise(x, sigma, None))
        # the middle block of UNet2DModel: block_out_channels[-1] = 16 channels, mean-pooled
        mid = []
        handle = unet.model.mid_block.register_forward_hook(lambda m, i, o: mid.append(o.mean(dim=(2, 3))))
        unet.denoise(x, sigma, None)
        handle.remove()
    assert features.shape == (3, unet.feature_dim) == (3, 16)
    assert torch.allclose(features, mid[0].double())
    # under CFG the features are those of the conditional half of the batched call
    guided, plain = DiffusersTeacher.from_pretrained(str(dit_folder)), DiffusersTeacher.from_pretrained(f"{dit_folder}?guidance=1")
    labels, x = torch.tensor([1, 500, 999]), noise(guided.shape) * 3
    with torch.no_grad():
        _, guided_features = guided.denoise_with_features(x, sigma, labels)
        _, plain_features = plain.denoise_with_features(x, sigma, labels)
    assert guided_features.shape == (3, guided.feature_dim) == (3, 16)
    assert torch.allclose(guided_features, plain_features, atol=1e-5)


@pytest.mark.parametrize("kind", list(SCHEDULERS))
def test_time_is_the_schedules_own(folders, kind):
    """teacher.time inverts itself, spans [sigma_min, sigma_max], and time-uniform steps are the
    schedule's natural ones: integer timesteps (VP), sigma itself (EDM), shifted uniform t (flow)."""
    teacher = DiffusersTeacher.from_pretrained(str(folders[kind]))
    for sigma in (teacher.sigma_min, 0.5, 7.0, teacher.sigma_max):
        t = torch.tensor(teacher.time.t(sigma), dtype=torch.float64)
        assert teacher.time.sigma(t).item() == pytest.approx(sigma, rel=1e-9)
    uniform = make_sigmas("time-uniform", 10, teacher)
    assert uniform[0].item() == pytest.approx(teacher.sigma_max) and uniform[-1].item() == pytest.approx(teacher.sigma_min)
    if kind.startswith("vp"):
        abar = DDPMScheduler.from_config(json.loads((folders[kind] / "scheduler" / "scheduler_config.json").read_text())).alphas_cumprod.double()
        k = torch.tensor([999, 888, 777, 666, 555, 444, 333, 222, 111, 0])  # 9 steps of 111
        assert torch.allclose(make_sigmas("time-uniform", 9, teacher), ((1 - abar[k]) / abar[k]).sqrt(), rtol=1e-9)
    elif kind == "flow":  # sigma = t / (1 - t) with t = shift(u) = 3u / (1 + 2u) on uniform u
        u = torch.linspace(0.999, 0.001, 11, dtype=torch.float64)
        assert torch.allclose(uniform, 3 * u / (1 - u), rtol=1e-9)
    gits = make_sigmas("gits", 6, teacher)
    assert bool(torch.all(gits[:-1] > gits[1:]))


def test_name_is_filesystem_safe():
    assert teacher_name("stable-diffusion-v1-5/stable-diffusion-v1-5") == "diffusers-stable-diffusion-v1-5"
    assert teacher_name("/data/my model (v2)/", 2.5) == "diffusers-my_model_v2-cfg2.5"


def write_config(folder, name, config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize("case,message", [
    ("missing", "neither an existing folder"),
    ("file", "is a file"),
    ("empty", "neither model_index.json"),
    ("unknown-class", "does not have"),
    ("unknown-scheduler", "unknown scheduler 'FooScheduler'"),
    ("no-scheduler", "no scheduler config"),
    ("not-a-denoiser", "holds a AutoencoderKL"),
    ("offline-hub", "could not get the diffusers pipeline 'nobody/no-such-model'"),
    ("guidance-unconditional", "has no unconditional input"),
    ("bad-option", "unknown option 'steps'"),
])
def test_clear_errors(tmp_path, monkeypatch, folders, case, message):
    spec = {"missing": str(tmp_path / "nowhere"), "offline-hub": "nobody/no-such-model",
            "guidance-unconditional": f"{folders['vp-epsilon']}?guidance=2",
            "bad-option": f"{folders['vp-epsilon']}?steps=3"}.get(case, str(tmp_path / case))
    if case == "file":
        (tmp_path / case).write_text("not a folder")
    elif case == "empty":
        (tmp_path / case).mkdir()
    elif case == "unknown-class":
        write_config(tmp_path / case, "config.json", {"_class_name": "NoSuchModel"})
        write_config(tmp_path / case, "scheduler_config.json", {"_class_name": "DDPMScheduler"})
    elif case == "unknown-scheduler":
        tiny_unet().save_pretrained(tmp_path / case)
        write_config(tmp_path / case, "scheduler_config.json", {"_class_name": "FooScheduler"})
    elif case == "no-scheduler":
        tiny_unet().save_pretrained(tmp_path / case)
    elif case == "not-a-denoiser":
        tiny_vae().save_pretrained(tmp_path / case)
        write_config(tmp_path / case, "scheduler_config.json", {"_class_name": "DDPMScheduler"})
    elif case == "offline-hub":
        monkeypatch.setenv("GASBENCH_OFFLINE", "1")
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(GasbenchError, match=message.replace("(", r"\(").replace("?", r"\?")):
        DiffusersTeacher.from_pretrained(spec)


def test_single_model_folder_with_its_scheduler_config(tmp_path):
    """A model folder (config.json + weights) with scheduler_config.json beside it loads like a pipeline."""
    tiny_unet().save_pretrained(tmp_path / "unet-only")
    DDPMScheduler(beta_schedule="linear").save_pretrained(tmp_path / "unet-only")
    teacher = DiffusersTeacher.from_pretrained(str(tmp_path / "unet-only"))
    assert teacher.name == "diffusers-unet-only" and teacher.schedule.kind == "discrete-vp"
    assert len(teacher.weights_sha256) == 64 and teacher.describe()["schedule"]["prediction_type"] == "epsilon"


# --- Stable Diffusion 1.5 and the CLIP score -----------------------------------------------------

@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    """A Stable Diffusion-style pipeline folder: text UNet, KL VAE, CLIP text encoder and tokenizer, and
    SD 1.5's scaled-linear betas (DDIM rather than PNDM, for an exact loop to compare with)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    tokenizer = tiny_tokenizer()
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(tiny_text_config(tokenizer))
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=16,
                                attention_head_dim=4, norm_num_groups=4)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, timestep_spacing="trailing", steps_offset=1)
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd"
    StableDiffusionPipeline(vae=tiny_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None, requires_safety_checker=False).save_pretrained(folder)
    return folder


def test_sd15_matches_the_stable_diffusion_pipeline(sd_folder):
    """Prompts by seed, text embeddings, CFG 7.5 and the scaled-linear schedule against
    StableDiffusionPipeline from the same latents on the same DDIM grid."""
    from diffusers import StableDiffusionPipeline

    from gasbench.teachers.sd15 import SD15Teacher

    teacher = SD15Teacher(weights=sd_folder)
    assert (teacher.name, teacher.shape, teacher.guidance_scale, len(teacher.prompts)) == ("sd15", (4, 8, 8), 7.5, 64)
    assert teacher.reference.to_dict() == {"solver": "ipndm", "nfe": 8, "schedule": "gits", "order": 2}
    seeds = (5, 70)
    cond = teacher.conditions([torch.Generator().manual_seed(s) for s in seeds])
    assert cond.tolist() == [5, 6]  # seed mod 64
    eps = torch.randn(2, *teacher.shape, generator=torch.Generator().manual_seed(0))
    pipe = StableDiffusionPipeline.from_pretrained(sd_folder)
    expected = pipe(teacher.prompts_for(cond), latents=eps, num_inference_steps=20, height=16, width=16,
                    output_type="latent").images.double()
    _, sigmas = vp_grid(pipe.scheduler.config, 20)
    ours = euler_from_vp_noise(teacher, sigmas, eps, cond)
    assert (ours - expected).norm() / expected.norm() < 1e-5
    other_prompts = euler_from_vp_noise(teacher, sigmas, eps, cond + 1)
    assert (other_prompts - expected).norm() / expected.norm() > 1e-2


def test_sd15_reference_and_embedding_cache(sd_folder):
    from gasbench.teachers.sd15 import SD15Teacher

    teacher = SD15Teacher(weights=sd_folder)
    calls = []
    teacher.pipe.text_encoder.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    cond = teacher.conditions([torch.Generator().manual_seed(s) for s in (0, 1, 64)])
    assert cond.tolist() == [0, 1, 0]
    samples = solve_reference(teacher, noise(teacher.shape, batch=3), teacher.reference.nfe, cond)
    # one encoder call for the two prompts and the empty prompt, none for the next seven evaluations
    assert calls == [3]
    assert torch.isfinite(samples).all()
    assert teacher.decode(samples).shape == (3, 3, 16, 16)
    assert teacher.describe()["prompts"]["count"] == 64 and teacher.weights_sha256 is not None


def test_sd15_prompt_file_and_weights(sd_folder, tmp_path, monkeypatch):
    from gasbench.teachers.sd15 import PROMPTS_ENV, SD15Teacher

    captions = tmp_path / "captions.txt"
    captions.write_text("A red apple on a table.\n\nTwo boats on a lake.\n")
    monkeypatch.setenv(PROMPTS_ENV, str(captions))
    teacher = SD15Teacher(weights=sd_folder)
    assert teacher.prompts == ["A red apple on a table.", "Two boats on a lake."]
    assert teacher.name.startswith("sd15-prompts-") and len(teacher.name) == len("sd15-prompts-") + 8
    assert teacher.prompts_for(teacher.conditions([torch.Generator().manual_seed(7)])) == ["Two boats on a lake."]
    with pytest.raises(GasbenchError, match="local Stable Diffusion 1.5 pipeline folder or one of"):
        SD15Teacher(weights="someone/other-model")
    monkeypatch.setenv(PROMPTS_ENV, str(tmp_path / "missing.txt"))
    with pytest.raises(GasbenchError, match="prompt file .* does not exist"):
        SD15Teacher(weights=sd_folder)


def test_a_stable_diffusion_folder_through_the_diffusers_spec(sd_folder):
    from gasbench.teachers.text_to_image import TextToImageTeacher

    teacher = DiffusersTeacher.from_pretrained(str(sd_folder))
    assert isinstance(teacher, TextToImageTeacher)
    assert (teacher.name, teacher.guidance_scale, len(teacher.prompts)) == ("diffusers-tiny-sd", 7.5, 64)
    assert DiffusersTeacher.from_pretrained(f"{sd_folder}?guidance=3").name == "diffusers-tiny-sd-cfg3"


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig

    tokenizer = tiny_tokenizer()
    torch.manual_seed(4)
    vision = CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                              image_size=32, patch_size=8)
    config = CLIPConfig(text_config=tiny_text_config(tokenizer).to_dict(), vision_config=vision.to_dict(), projection_dim=8)
    folder = tmp_path_factory.mktemp("clip") / "tiny-clip"
    CLIPModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_clip_score(clip_folder):
    """100 * max(cos, 0) between CLIP's image and text embeddings, batch-size independent; images at
    CLIP's own size go in unresized, so a direct CLIPModel call must give the same number."""
    from gasbench.teachers.sd15 import CLIP_MEAN, CLIP_STD, clip_score, load_clip

    prompts = ["a red apple on a table", "two boats on a lake", "a cat on a sofa", "a snowy street"]
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    score = clip_score(images, prompts, str(clip_folder))
    assert 0 <= score <= 100
    assert clip_score(images, prompts, str(clip_folder), batch_size=1) == pytest.approx(score, rel=1e-5)
    model, tokenizer = load_clip(str(clip_folder))
    pixels = (images - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        text = tokenizer(prompts, padding=True, truncation=True, max_length=16, return_tensors="pt")
        out = model(**text, pixel_values=pixels)
    direct = 100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0).mean()
    assert score == pytest.approx(float(direct), rel=1e-5)
    assert clip_score(images[:, :, :16, :16], prompts, str(clip_folder)) != pytest.approx(score, rel=1e-3)
    with pytest.raises(GasbenchError, match="one prompt per image"):
        clip_score(images, prompts[:3], str(clip_folder))


def test_gasbench_run_on_a_diffusers_folder_with_clip_score(sd_folder, clip_folder, tmp_path, monkeypatch, capsys):
    """The user's route: `gasbench run --dataset diffusers:<folder>`, scored with each sample's own
    prompt; a class-conditional teacher refuses clip-score with one message."""
    import json

    from helpers import gasbench

    monkeypatch.setenv("GASBENCH_CLIP_MODEL", str(clip_folder))
    results = tmp_path / "results"
    code, out, err = gasbench(monkeypatch, capsys, "run", "--dataset", f"diffusers:{sd_folder}", "-m", "euler",
                              "--nfe", "3", "-n", "4", "--batch-size", "2", "--metrics", "clip-score,rmse",
                              "--results-dir", results)
    assert code == 0, err
    [record_path] = results.glob("*/euler/nfe3/metrics.json")
    record = json.loads(record_path.read_text())
    assert 0 <= record["metrics"]["clip-score"] <= 100 and record["nfe_measured"] == 3
    assert record["metric_provenance"]["clip-score"]["network"] == str(clip_folder)
    teacher_row = json.loads(next(results.glob("*/teacher/*/metrics.json")).read_text())
    assert "clip-score" in teacher_row["metrics"]
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "digits", "-m", "euler", "--nfe", "2", "-n", "4",
                            "--metrics", "clip-score", "--results-dir", tmp_path / "r2")
    assert code != 0 and "not a text-to-image teacher" in err and "Traceback" not in err
