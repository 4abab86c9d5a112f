"""gasbench on a CUDA GPU (``pytest -m gpu``; benchmarks/gpu/run.sh runs these on the GPU machine).

Every kind of teacher, each on small random-init networks, is placed on the GPU and gives the CPU's
denoiser outputs; bf16 autocast stays close to fp32; ``--batch-size auto`` picks a batch that fits;
torchrun joins NCCL and writes the records one process writes; and a short digits run on CUDA
records what the same run on the CPU records. Without a CUDA device every test skips.

Tolerances: cuDNN runs float32 convolutions in TF32 by default (10 mantissa bits, unit roundoff
2^-11), so GPU and CPU outputs agree to about 1e-3 relative, not bit for bit; a placement or
conditioning mistake shows as an O(1) difference. bf16 keeps 8 mantissa bits (2^-9).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import gasbench, tiny_edm, write_lightning_checkpoint, write_release
from test_diffusers_teacher import dit_folder, folders, sd_folder  # noqa: F401 (fixtures)
from test_ldm import TINY_IMAGENET, TinyImageNet, ldm_unet_state, ldm_vq_state, perturbed, schedule_buffers, tiny_networks

from gasbench.core.seeds import noise_and_conditions
from gasbench.sampling import auto_batch_size
from gasbench.teachers.load import load_teacher

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU: benchmarks/gpu/run.sh runs these on one (benchmarks/gpu/README.md)"),
]
KINDS = ("analytic gmm", "built-in digits UNet", "EDM release network", "diffusers pixel UNet",
         "diffusers latent DiT + VAE", "LDM class-conditional + guidance", "Stable Diffusion 1.5 text")
NETWORK_KINDS = ("built-in digits UNet", "EDM release network", "diffusers pixel UNet")
TF32_TOLERANCE = 1e-2  # relative L2; a few TF32 roundings per layer through a dozen layers
BF16_TOLERANCE = 5e-2


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def imagenet_ldm_checkpoint(path: Path) -> Path:
    """A tiny class-conditional LDM checkpoint in the CompVis layout (as tests/test_ldm.py writes one)."""
    unet, vq = tiny_networks(TINY_IMAGENET)
    embedding = perturbed(torch.nn.Embedding(6, 12), seed=9)
    write_lightning_checkpoint(path, {**ldm_unet_state(unet, legacy=False), **ldm_vq_state(vq),
                                      **schedule_buffers(TINY_IMAGENET),
                                      "cond_stage_model.embedding.weight": embedding.weight.detach()})
    return path


@pytest.fixture
def kinds(tmp_path, recording, folders, dit_folder, sd_folder):  # noqa: F811 (fixtures)
    """kind -> make(device, precision): the same teacher built anew on ``device``."""
    root = tmp_path
    edm_file = write_release(tiny_edm("EDMPrecond-ddpmpp"), root / "edm-tiny.pkl")
    ldm_file = imagenet_ldm_checkpoint(root / "cin256-v2.ckpt")

    def named(spec, weights=None):
        return lambda device, precision="fp32": load_teacher(spec, weights=weights, device=device, precision=precision)

    def ldm(device, precision="fp32"):
        teacher = TinyImageNet(weights=ldm_file)
        teacher.precision = precision
        return teacher.to(device)

    return dict(zip(KINDS, (named("gmm"), named("digits"), named("cifar10", edm_file),
                            named(f"diffusers:{folders['vp-epsilon']}"), named(f"diffusers:{dit_folder}"), ldm,
                            named("sd15", sd_folder))))


def probe(teacher, seeds=(0, 1, 2, 3), sigma=3.0):
    """The solver's side of a denoiser call: CPU float64 states at ``sigma`` and their conditions."""
    noise, cond = noise_and_conditions(teacher, list(seeds))
    return noise * sigma, torch.tensor(sigma, dtype=torch.float64), cond


@pytest.mark.parametrize("kind", KINDS)
def test_every_teacher_kind_runs_on_the_gpu(kinds, kind):
    cpu, gpu = kinds[kind]("cpu"), kinds[kind]("cuda")
    assert gpu.device.type == "cuda"
    for module in gpu.modules():
        assert all(t.is_cuda for t in (*module.parameters(), *module.buffers())), type(module).__name__
    x, sigma, cond = probe(cpu)
    with torch.no_grad():
        expected, got = cpu.denoiser(cond)(x, sigma), gpu.denoiser(cond)(x, sigma)
        # the solver keeps its states where they are: on the CPU, in float64
        assert (got.device, got.dtype) == (x.device, x.dtype)
        assert relative(got, expected) < TF32_TOLERANCE
        denoised, features = gpu.denoiser(cond).with_features(x, sigma)
        assert features.device == x.device and features.shape == (len(x), gpu.feature_dim)
        assert relative(denoised, expected) < TF32_TOLERANCE
        images = gpu.decode(expected.float())
        assert relative(images.cpu(), cpu.decode(expected.float())) < TF32_TOLERANCE


@pytest.mark.parametrize("kind", NETWORK_KINDS)
def test_bf16_autocast_on_the_gpu_stays_close_to_fp32(kinds, kind):
    fp32, bf16 = kinds[kind]("cuda"), kinds[kind]("cuda", "bf16")
    x, sigma, cond = probe(fp32)
    with torch.no_grad():
        exact, mixed = fp32.denoiser(cond)(x, sigma), bf16.denoiser(cond)(x, sigma)
    assert mixed.dtype == x.dtype
    assert 0 < relative(mixed, exact) < BF16_TOLERANCE  # visibly bf16, still the same network


def test_auto_batch_size_fits_the_gpu(kinds, monkeypatch, capsys, tmp_path):
    teacher = kinds["EDM release network"]("cuda")
    chosen = auto_batch_size(teacher)
    assert chosen >= 1 and chosen & (chosen - 1) == 0  # a power of two
    free, _ = torch.cuda.mem_get_info()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    x, sigma, cond = probe(teacher, seeds=range(chosen))
    with torch.no_grad():
        teacher.denoiser(cond)(x, sigma)
    assert torch.cuda.max_memory_allocated() - before < free
    code, _, err = gasbench(monkeypatch, capsys, "run", "-d", "digits", "-m", "euler", "--nfe", "2", "-n", "8",
                            "--metrics", "rmse", "--batch-size", "auto", "--device", "cuda", "--results-dir", tmp_path)
    assert code == 0, err[-2000:]
    assert "from free memory on cuda" in err


def _records(root: Path) -> dict[str, dict]:
    """The records under ``root`` by their path there."""
    return {str(p.relative_to(root)): json.loads(p.read_text()) for p in sorted(root.glob("**/metrics.json"))}


def test_torchrun_with_one_gpu_joins_nccl_and_records_what_one_process_records(tmp_path, monkeypatch, capsys):
    probe_script = tmp_path / "nccl_probe.py"
    probe_script.write_text(
        "import torch, torch.distributed as dist\n"
        "from gasbench.core import distributed\n"
        "assert distributed.init_from_env()\n"
        "total = torch.full((3,), 2.0, device='cuda')\n"
        "dist.all_reduce(total)\n"
        "print('backend', dist.get_backend_config(), 'sum', total.tolist(), 'nccl', torch.cuda.nccl.version())\n")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1"]
    env = {**os.environ, "GASBENCH_OFFLINE": "1"}
    done = subprocess.run([*launcher, str(probe_script)], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "cuda:nccl" in done.stdout and "sum [2.0, 2.0, 2.0]" in done.stdout

    run = ["run", "-d", "digits", "-m", "euler,dpmpp3m", "--nfe", "4", "-n", "64", "--metrics", "rmse,psnr",
           "--device", "cuda"]
    done = subprocess.run([*launcher, "-m", "gasbench", *run, "--results-dir", str(tmp_path / "torchrun")], env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    code, _, err = gasbench(monkeypatch, capsys, *run, "--results-dir", tmp_path / "one")
    assert code == 0, err[-2000:]
    one, launched = _records(tmp_path / "one"), _records(tmp_path / "torchrun")
    assert one and launched.keys() == one.keys()
    for path, record in one.items():
        assert launched[path]["metrics"] == pytest.approx(record["metrics"], rel=1e-6), path


def test_a_digits_run_on_cuda_records_what_the_cpu_run_records(tmp_path, monkeypatch, capsys):
    """Handcrafted cells and a short GS fit; the fit's Adam steps normalise each gradient, so a
    TF32-sized difference in a near-zero gradient moves a parameter by up to lr: the learned
    cell gets a wider tolerance."""
    run = ["run", "-d", "digits", "-m", "euler,dpmpp3m,gs", "--nfe", "4", "-n", "128", "--metrics", "rmse,psnr,fd",
           "--solver-arg", "iterations=10", "--solver-arg", "train_size=96"]
    for device in ("cpu", "cuda"):
        code, _, err = gasbench(monkeypatch, capsys, *run, "--device", device, "--results-dir", tmp_path / device)
        assert code == 0, err[-2000:]
    cpu, cuda = _records(tmp_path / "cpu"), _records(tmp_path / "cuda")
    methods = {path: record["method"].split("+")[0] for path, record in cpu.items()}  # gs+iterations=10+...
    assert set(methods.values()) >= {"euler", "dpmpp3m", "gs"} and cuda.keys() == cpu.keys()
    for path, record in cpu.items():
        rel = 5e-2 if methods[path] == "gs" else TF32_TOLERANCE
        assert cuda[path]["metrics"] == pytest.approx(record["metrics"], rel=rel, abs=1e-3), path
