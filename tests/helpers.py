"""Shared test helpers: the command line run in-process, pickle payloads that would run code,
classes pickled under the names a real training framework gives them, and writers of the release
and checkpoint files several test modules load (EDM pickles, Lightning checkpoints, tiny diffusers
UNets)."""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import diffusers
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from gasbench.cli import main
from gasbench.core.registry import SOLVERS
from gasbench.solvers.executor import execute
from gasbench.teachers import edm_networks


def gasbench(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    """``gasbench *args`` in this process: (exit code, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["gasbench", *map(str, args)])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out, err = capsys.readouterr()
    return code, out, err


# a cheap cell on the analytic teacher, with no teacher row (rmse is paired)
RUN = ("run", "-d", "gmm", "--nfe", "4", "-n", "16", "--metrics", "rmse")

# a plugin: the gmm teacher, slowed down and announcing its first denoiser call when the test asks for it
SLOW_TEACHER = '''
import os
import time
from pathlib import Path

from gasbench.core.registry import register_teacher
from gasbench.teachers.gmm import GaussianMixtureTeacher, gmm_teacher


class SlowTeacher(GaussianMixtureTeacher):
    name = "slow-gmm"

    def denoise(self, x, sigma, cond):
        if "STARTED" in os.environ:
            Path(os.environ["STARTED"]).touch()
            time.sleep(0.2)
        return super().denoise(x, sigma, cond)


@register_teacher("slow-gmm")
def slow_gmm():
    gmm = gmm_teacher()
    return SlowTeacher(gmm.means, gmm.std)
'''

# the calls a payload can make, each creating ``marker`` when it runs
PAYLOAD_CALLS = ("os.system", "posix.system", "builtins.exec", "builtins.eval", "subprocess.Popen")


class Payload:
    """Unpickled by plain ``pickle``, creates ``marker`` through ``call``. ``os.system`` pickles as
    ``posix.system`` (its own module); the literal ``os.system`` spelling is :func:`raw_os_system`."""

    def __init__(self, call: str, marker: Path):
        self.call, self.marker = call, Path(marker)

    def __reduce__(self):
        touch = f"open({str(self.marker)!r}, 'w').close()"
        return {"posix.system": (os.system, (f"touch {self.marker}",)),
                "builtins.exec": (exec, (touch,)),
                "builtins.eval": (eval, (touch,)),
                "subprocess.Popen": (subprocess.Popen, (["touch", str(self.marker)],))}[self.call]


def raw_os_system(marker: Path) -> bytes:
    """A protocol-0 pickle naming ``os.system`` as attackers write it by hand."""
    return f"cos\nsystem\n(S'touch {marker}'\ntR.".encode()


class ModelCheckpoint:
    """Stands for PyTorch-Lightning's callback class: Lightning 1.4 keys the callback's state in a
    checkpoint's ``callbacks`` by the class itself (``trainer/callback_hook.py``)."""


LIGHTNING_CLASSES = {"pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint": ModelCheckpoint}


@contextlib.contextmanager
def pickled_as(classes: dict[str, type]) -> Iterator[None]:
    """While it lasts, ``pickle`` writes each class under its dotted name (stand-in modules are
    registered for names that are not importable here) and finds it there again."""
    added, replaced = [], []
    for dotted, cls in classes.items():
        module, cls.__qualname__ = dotted.rsplit(".", 1)
        cls.__module__ = module
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):
            name = ".".join(parts[:depth])
            if name not in sys.modules:
                sys.modules[name] = types.ModuleType(name)
                added.append(name)
        replaced.append((sys.modules[module], cls.__qualname__, getattr(sys.modules[module], cls.__qualname__, None)))
        setattr(sys.modules[module], cls.__qualname__, cls)
    try:
        yield
    finally:
        for module, name, previous in replaced:
            if previous is None:
                delattr(module, name)
            else:
                setattr(module, name, previous)
        for name in reversed(added):
            del sys.modules[name]


def write_lightning_checkpoint(path, state: dict[str, torch.Tensor], **extra) -> None:
    """As Lightning 1.4 saves one: the callback's state keyed by pytorch_lightning's class, hparams as a dict."""
    with pickled_as(LIGHTNING_CLASSES):
        torch.save({"state_dict": {k: v.float() for k, v in state.items()}, "global_step": 1234, "epoch": 7,
                    "pytorch-lightning_version": "1.4.2",
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1), "best_model_path": "last.ckpt"}},
                    "hyper_parameters": {"lr": 1e-4}, **extra}, path)


# Tiny EDM networks (NVlabs/edm training/networks.py's SongUNet under each preconditioning)
EDM_TINY = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[16], dropout=0.13)
DDPMPP = dict(embedding_type="positional", encoder_type="standard", decoder_type="standard", channel_mult_noise=1,
              resample_filter=[1, 1], augment_dim=9)
NCSNPP = dict(embedding_type="fourier", encoder_type="residual", decoder_type="skip", channel_mult_noise=2,
              resample_filter=[1, 3, 3, 1])
EDM_NETWORKS = {
    "EDMPrecond-ddpmpp": ("EDMPrecond", dict(sigma_data=0.5, **DDPMPP)),
    "VPPrecond-ddpmpp": ("VPPrecond", dict(beta_d=19.9, beta_min=0.1, M=1000, **DDPMPP)),
    "VEPrecond-ncsnpp": ("VEPrecond", NCSNPP),
}


def tiny_edm(kind: str, resolution: int = 32) -> torch.nn.Module:
    """A tiny network of :data:`EDM_NETWORKS` with every weight perturbed."""
    class_name, options = EDM_NETWORKS[kind]
    net = edm_networks.PRECONDS[class_name](img_resolution=resolution, img_channels=3, model_type="SongUNet", **EDM_TINY,
                                   **options)
    with torch.no_grad():  # the near-zero output layers of a fresh net would hide wrong wiring
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return net.eval()


@dataclass
class Persistent:
    """A persistent object other than the network (augment pipe, loss) as a release records it."""

    class_name: str
    state: dict
    module_src: str = ""


def _reconstruct_persistent_obj(meta):
    """The stand-in for EDM's loader, which runs the embedded source to rebuild the class."""
    exec(meta["module_src"], {})
    return types.SimpleNamespace(**meta)


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"  # where pickle looks it up


@contextlib.contextmanager
def release_modules():
    """``torch_utils.persistence`` and ``dnnlib.util`` as they exist on the machine that wrote a
    release; outside this context they are absent, as on a user's machine."""
    modules = {name: types.ModuleType(name) for name in ("torch_utils", "torch_utils.persistence", "dnnlib",
                                                          "dnnlib.util")}
    modules["torch_utils.persistence"]._reconstruct_persistent_obj = _reconstruct_persistent_obj
    modules["dnnlib.util"].EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    with pytest.MonkeyPatch.context() as patch:
        for name, module in modules.items():
            patch.setitem(sys.modules, name, module)
        yield modules


class ReleasePickler(pickle.Pickler):
    """Pickles gasbench's EDM modules as EDM's persistence decorator pickles its classes:
    ``_reconstruct_persistent_obj(meta)`` with the module source and the instance's state."""

    def __init__(self, file, module_src: str, rename: dict[str, str], overrides: dict[str, dict]):
        super().__init__(file, protocol=4)
        self.module_src, self.rename, self.overrides = module_src, rename, overrides

    def reducer_override(self, obj):
        if isinstance(obj, Persistent):
            return _reconstruct_persistent_obj, (self.meta(obj.class_name, obj.state, obj.module_src),)
        if type(obj) not in edm_networks.NETWORK_CLASSES.values():
            return NotImplemented
        state = dict(vars(obj))
        if "skip_scale" in state:  # EDM keeps np.sqrt(0.5) here
            state["skip_scale"] = np.float64(state["skip_scale"])
        if type(obj) in edm_networks.PRECONDS.values():  # an argument only EDM's fp16 switch reads
            state["use_fp16"], state["_init_kwargs"] = False, {**state["_init_kwargs"], "use_fp16": False}
        name = type(obj).__name__
        state.update(self.overrides.get(name, {}))
        return _reconstruct_persistent_obj, (self.meta(self.rename.get(name, name), state, self.module_src),)

    @staticmethod
    def meta(class_name: str, state: dict, module_src: str) -> dict:
        return dict(type="class", version=6, module_src=module_src, class_name=class_name, state=state)


def write_release(network, path, extra=None, module_src="import torch  # training/networks.py", rename=None,
                  overrides=None):
    """Write ``network`` as an EDM training snapshot / release pickle: {'ema', 'loss_fn', 'augment_pipe',
    'dataset_kwargs'}, network modules as persistence records with their source, tensors pickled normally;
    ``rename`` and ``overrides`` (class name -> attributes) alter what the records say."""
    with release_modules() as modules:
        data = {"ema": network, "loss_fn": Persistent("EDMLoss", {"P_mean": -1.2, "P_std": 1.2, "sigma_data": 0.5}),
                "augment_pipe": Persistent("AugmentPipe", {"p": 0.12, "xflip": 1e8, "_init_args": (),
                                                           "_init_kwargs": {"p": 0.12}}),
                "dataset_kwargs": modules["dnnlib.util"].EasyDict(path="datasets/cifar10-32x32.zip", resolution=32),
                **(extra or {})}
        buffer = io.BytesIO()
        ReleasePickler(buffer, module_src, rename or {}, overrides or {}).dump(data)
    path.write_bytes(buffer.getvalue())
    return path


# the training schedules of diffusers' schedulers a tiny pipeline is saved with, by kind
SCHEDULERS = {
    "vp-epsilon": lambda: diffusers.DDPMScheduler(beta_schedule="linear", prediction_type="epsilon"),
    "vp-v": lambda: diffusers.DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                            prediction_type="v_prediction"),
    "edm": lambda: diffusers.EDMEulerScheduler(prediction_type="epsilon"),
    "flow": lambda: diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0),
}


def tiny_unet(**extra) -> diffusers.UNet2DModel:
    """A tiny diffusers UNet on 2 x 8 x 8 images, the same weights on every call."""
    torch.manual_seed(0)
    return diffusers.UNet2DModel(sample_size=8, in_channels=2, out_channels=2, block_out_channels=(8, 16),
                                 layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, **extra)


def short_fit(method: str, teacher, nfe: int, **options):
    """A short fit on 12 (noise, dpmpp3m NFE 8 solution) pairs, 8 to train on and 4 to validate, as
    `gasbench run` fits a learned cell."""
    noise = torch.randn(12, *teacher.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    with torch.no_grad():
        x0 = execute(SOLVERS.get("dpmpp3m")().table(teacher, 8), teacher.denoiser(None), noise * teacher.sigma_max)
    pairs = {"noise": noise.float(), "x0": x0.float()}
    solver = SOLVERS.get(method)(batch_size=4, **options)
    solver.fit(teacher, nfe, {k: v[:8] for k, v in pairs.items()}, {k: v[8:] for k, v in pairs.items()}, progress=False)
    return solver


def distributed_work(out: Path, fits: tuple[str, ...], fit_options: dict) -> None:
    """What each process of tests/test_distributed.py's torchrun test does (and one process, for
    comparison): the distributed primitives, sampling, features and short fits (``fit_options``) of
    each learned solver of ``fits``, saved as ``rank<r>.safetensors`` under ``out``."""
    from gasbench.core import distributed
    from gasbench.core.errors import GasbenchError
    from gasbench.features import feature_space
    from gasbench.core.registry import SOLVERS, TEACHERS
    from gasbench.sampling import sample_seeds
    from gasbench.trajectories import TrajectoryCache

    distributed.init_from_env()
    rank, gmm = distributed.rank(), TEACHERS.get("gmm")()
    parameter = torch.zeros(3, dtype=torch.float32, requires_grad=True)
    parameter.grad = torch.full((3,), float(rank + 1))
    distributed.average_gradients([parameter], count=3 + rank)  # counts 3 and 4: (3*1 + 4*2) / 7
    batches = []
    samples = sample_seeds(gmm, SOLVERS.get("dpmpp2m")().table(gmm, 5), list(range(50_000, 50_037)), 8,
                           on_batch=batches.append)
    tensors = {
        "gathered": distributed.gather(distributed.shard(torch.arange(7.0).reshape(7, 1))),
        "empty_block": distributed.gather(torch.zeros((rank, 2))),  # rank 0 holds nothing
        "average": parameter.grad,
        "batches": torch.tensor(batches),
        "samples": samples,
        "features": torch.from_numpy(feature_space("pixels").extract_all(gmm.decode(samples), gmm)),
    }
    data = []
    for split, size in (("train", 64), ("validation", 16)):
        cache = TrajectoryCache.for_split(gmm, split, size, root=out / "cache")
        cache.generate()
        data.append({k: v for k, v in cache.load().items() if k in ("noise", "x0")})
    for method in fits:
        solver = SOLVERS.get(method)(**fit_options)
        tensors[f"{method}.initial"] = torch.cat([v.flatten() for v in solver.parameters_for(gmm, 3).values()])
        solver.fit(gmm, 3, *data, progress=False)
        tensors[f"{method}.trained"] = torch.cat([v.flatten() for v in solver.params.values()])
        if solver.start_offsets is not None:
            tensors[f"{method}.offsets"] = solver.start_offsets
    try:  # a batch of one pair has no slice for a second process
        SOLVERS.get("gs")(iterations=1, batch_size=1).fit(gmm, 3, *data, progress=False)
        tensors["refused"] = torch.tensor(False)
    except GasbenchError as exc:
        tensors["refused"] = torch.tensor("cannot be split over 2 processes" in str(exc))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / f"rank{rank}.safetensors"))


def release_updates(model_fn, lam, alpha, std, t, y, a_diff, c_diff):
    """The update loop of the GAS release's ``GeneralizedSolver.sample`` (src/gas/generalized_solver.py:
    356-402) with theoretical guidance, in VP variables: order N = steps (main.py:71-72), so update
    ``step`` has order min(step, 3) with no lower final order; a{i}_diff / c{i}_diff[n] are
    ``a_diff`` / ``c_diff``[n, i - 1]. ``model_fn(y, n)`` is its data prediction at point n; starts
    from ``y`` at t[0] and returns y at t[N]."""
    steps = len(t) - 1
    ys, ms = [y], [model_fn(y, 0)]
    for step in range(1, steps + 1):
        p, tn, tp = step - 1, t[step], t[:step]
        h = lam(tn) - lam(tp[-1])
        phi_1, a_ii, alpha_t = torch.expm1(-h), std(tn) / std(tp[-1]), alpha(tn)
        a1, c1 = a_ii + a_diff[p, 0], alpha_t * phi_1 + c_diff[p, 0]
        if step == 1:  # first_update
            y = a1 * y - c1 * ms[-1]
        elif step == 2:  # second_update
            r0 = (lam(tp[-1]) - lam(tp[-2])) / h
            d1_0 = (1.0 / r0) * (ms[-1] - ms[-2])
            c2 = 0.5 * (alpha_t * phi_1) + c_diff[p, 1]
            y = a1 * y - c1 * ms[-1] - c2 * d1_0 + a_diff[p, 1] * ys[-2]
        else:  # unbound_update
            r0, r1 = (lam(tp[-1]) - lam(tp[-2])) / h, (lam(tp[-2]) - lam(tp[-3])) / h
            d1_0, d1_1 = (1.0 / r0) * (ms[-1] - ms[-2]), (1.0 / r1) * (ms[-2] - ms[-3])
            d1, d2 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1), (1.0 / (r0 + r1)) * (d1_0 - d1_1)
            phi_2 = phi_1 / h + 1.0
            phi_3 = phi_2 / h - 0.5
            c2, c3 = alpha_t * phi_2 + c_diff[p, 1], alpha_t * phi_3 + c_diff[p, 2]
            y = a1 * y - c1 * ms[-1] + c2 * d1 - c3 * d2
            for i in range(4, step + 1):
                y = y + c_diff[p, i - 1] * ms[-i]
            for i in range(2, step + 1):
                y = y + a_diff[p, i - 1] * ys[-i]
        if step == steps:
            return y
        ys.append(y)
        ms.append(model_fn(y, step))
