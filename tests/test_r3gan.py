"""R3GAN discriminators: a pickle written in the release's format loads without running its code
(a class embedding replaced by the constant 1, as GAS's release does); pickles that carry code
are refused and their payload never runs; GAS finds the pretrained checkpoint of a pixel teacher."""

from __future__ import annotations

import copy
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS, TEACHERS
from gasbench.core.safe_pickle import ModuleRecord, load_network_pickle
from gasbench.solvers import r3gan
from gasbench.solvers.r3gan import PRETRAINED, R3GANDiscriminator, load_r3gan_discriminator
from helpers import Payload


def release_names(root: str = "R3GAN", wrapper: str = "training.networks") -> dict:
    """Where each of our classes lives in the R3GAN release (training/networks.py, R3GAN/*.py; the
    pickles name the fused classes that FusedOperators.py:33 and Resamplers.py:102 alias). Older
    pickles say ``BaselineGAN.`` and ``training.networks_baseline`` (R3GAN legacy.py renames them)."""
    return {
        r3gan.R3GANDiscriminator: (wrapper, "Discriminator"),
        r3gan.R3GANBody: (f"{root}.Networks", "Discriminator"),
        r3gan.DiscriminatorStage: (f"{root}.Networks", "DiscriminatorStage"),
        r3gan.ResidualBlock: (f"{root}.Networks", "ResidualBlock"),
        r3gan.Convolution: (f"{root}.Networks", "Convolution"),
        r3gan.DownsampleLayer: (f"{root}.Networks", "DownsampleLayer"),
        r3gan.DiscriminativeBasis: (f"{root}.Networks", "DiscriminativeBasis"),
        r3gan.BiasedActivation: (f"{root}.FusedOperators", "BiasedActivationCUDA"),
        r3gan.Downsampler: (f"{root}.Resamplers", "InterpolativeDownsamplerCUDA"),
    }


RELEASE_NAMES = release_names()
LEGACY_NAMES = release_names("BaselineGAN", "training.networks_baseline")
# R3GAN's CIFAR-10 layout (train.py --preset CIFAR10 --cond 1: final width = embedding width), small
LAYOUT = {"channels": 3, "widths": [16, 32, 32], "cardinalities": [2, 4, 4], "blocks": [1, 2, 1], "expansion": 2,
          "outputs": 16}
CLASSES = 10


@pytest.fixture
def release_modules(monkeypatch):
    """Stand-ins for the release's modules, present only while a test writes its pickle."""
    modules = {}
    for module_name, _ in [*RELEASE_NAMES.values(), *LEGACY_NAMES.values()]:
        for part in range(1, module_name.count(".") + 2):
            name = ".".join(module_name.split(".")[:part])
            modules.setdefault(name, types.ModuleType(name))
    modules["dnnlib"], modules["dnnlib.util"] = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")
    modules["dnnlib.util"].EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


def write_release_pickle(network: nn.Module, modules, path, extra=None, embedding=None, names=RELEASE_NAMES) -> None:
    """Pickle ``network`` as the release does: its modules are instances of the release's classes;
    with ``embedding`` (an nn.Linear, as Networks.py:163 makes it) as ``Model.EmbeddingLayer``."""
    network = copy.deepcopy(network)
    for ours, (module_name, class_name) in names.items():
        if not hasattr(modules[module_name], class_name):
            setattr(modules[module_name], class_name, type(class_name, (nn.Module,), {"__module__": module_name}))
    if embedding is not None:
        network.Model.EmbeddingLayer = copy.deepcopy(embedding)
    for module in network.modules():
        if type(module) in names:
            module_name, class_name = names[type(module)]
            module.__class__ = getattr(modules[module_name], class_name)
    kwargs = modules["dnnlib.util"].EasyDict(resolution=16, c_dim=0 if embedding is None else embedding.in_features)
    path.write_bytes(pickle.dumps({"G": None, "D": network, "augment_pipe": None, "training_set_kwargs": kwargs,
                                   **(extra or {})}, protocol=4))


def perturbed(network: nn.Module) -> nn.Module:
    with torch.no_grad():  # the zero-initialised last convolutions would hide wrong wiring
        for p in network.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return network


def release_forward(state: dict, x: torch.Tensor, embedding=1.0) -> torch.Tensor:
    """R3GAN.Networks.Discriminator.forward (Networks.py:165-173) written out on the pickled tensors,
    with the reference ops (FusedOperators.py:17, Resamplers.py:6-9, 24-35); ``embedding`` is what
    EmbeddingLayer(y) returns: GAS's Constant() gives 1 (load_discriminator.py:16-17, 36-37)."""
    w = {k.removeprefix("Model."): v for k, v in state.items()}
    taps = torch.tensor(np.convolve([1, 2, 1], [1, 1]), dtype=torch.float32)  # ResamplingFilter [1, 2, 1]
    kernel = (torch.outer(taps, taps) / torch.outer(taps, taps).sum()).view(1, 1, 4, 4)

    def biased_lrelu(y, bias):
        return F.leaky_relu(y + bias.view(1, -1, 1, 1), 0.2)

    x = F.conv2d(x, w["ExtractionLayer.Layer.weight"])
    stages = sorted({int(k.split(".")[1]) for k in w if k.startswith("MainLayers.")})
    for i in stages:
        blocks = sorted({int(k.split(".")[3]) for k in w if k.startswith(f"MainLayers.{i}.Layers.")})
        for j in blocks[:-1]:
            p = f"MainLayers.{i}.Layers.{j}."
            grouped = w[p + "LinearLayer2.Layer.weight"]
            y = biased_lrelu(F.conv2d(x, w[p + "LinearLayer1.Layer.weight"]), w[p + "NonLinearity1.Bias"])
            y = F.conv2d(y, grouped, padding=grouped.shape[-1] // 2, groups=y.shape[1] // grouped.shape[1])
            x = x + F.conv2d(biased_lrelu(y, w[p + "NonLinearity2.Bias"]), w[p + "LinearLayer3.Layer.weight"])
        p = f"MainLayers.{i}.Layers.{blocks[-1]}."
        if i == stages[-1]:  # DiscriminativeBasis
            x = F.linear(F.conv2d(x, w[p + "Basis.weight"], groups=x.shape[1]).view(x.shape[0], -1), w[p + "LinearLayer.weight"])
        else:  # DownsampleLayer: low-pass + stride 2, then the 1x1 convolution if the width changes
            b, c, h, wd = x.shape
            x = F.conv2d(x.reshape(b * c, 1, h, wd), kernel, stride=2, padding=1).view(b, c, h // 2, wd // 2)
            if p + "LinearLayer.Layer.weight" in w:
                x = F.conv2d(x, w[p + "LinearLayer.Layer.weight"])
    return (x * embedding).sum(dim=1, keepdim=True).view(x.shape[0])


@pytest.mark.parametrize("names", [RELEASE_NAMES, LEGACY_NAMES], ids=["R3GAN", "BaselineGAN"])
def test_class_conditional_release_pickle_loads_with_the_constant_embedding(release_modules, tmp_path, names):
    torch.manual_seed(0)
    original = perturbed(R3GANDiscriminator(**LAYOUT))
    embedding = perturbed(nn.Linear(CLASSES, LAYOUT["outputs"], bias=False))
    write_release_pickle(original, release_modules, tmp_path / "network-snapshot.pkl", embedding=embedding, names=names)
    state = {**original.state_dict(), "Model.EmbeddingLayer.weight": embedding.weight.detach()}
    for name in list(release_modules):
        sys.modules.pop(name)  # a user's machine has no R3GAN code to import
    loaded = load_r3gan_discriminator(tmp_path / "network-snapshot.pkl")
    assert not hasattr(loaded.Model, "EmbeddingLayer") and loaded.Model.resolution == 16
    x, classes = torch.randn(3, 3, 16, 16), torch.tensor([0, 4, 9])
    constant = release_forward(state, x)
    torch.testing.assert_close(loaded(x), constant)
    torch.testing.assert_close(loaded(x, classes), constant)  # classes are ignored, as the release passes none
    # the check can fail: the class-conditional logits of the same file are different numbers
    conditional = release_forward(state, x, embedding(F.one_hot(classes, CLASSES).float()))
    assert (conditional - constant).abs().min() > 1e-3
    # a lower-resolution teacher is resized to the discriminator's resolution
    assert loaded(torch.randn(2, 3, 8, 8)).shape == (2,)


def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(release_modules, tmp_path):
    target = tmp_path / "pwned"
    write_release_pickle(R3GANDiscriminator(**LAYOUT), release_modules, tmp_path / "evil.pkl",
                         extra={"payload": Payload("posix.system", target)})
    with pytest.raises(GasbenchError, match="system'.*refusing"):
        load_r3gan_discriminator(tmp_path / "evil.pkl")
    assert not target.exists()
    with pytest.raises(GasbenchError, match="builtins.eval"):
        load_network_pickle(pickle.dumps(Payload("builtins.eval", target)), module_prefixes=("R3GAN.",))
    assert not target.exists()


def test_persistence_records_keep_their_state_and_never_execute_embedded_source(tmp_path, monkeypatch):
    target = tmp_path / "ran"
    persistence = types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # what the release would run: exec(meta["module_src"])
        raise AssertionError("must not be called")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    monkeypatch.setitem(sys.modules, "torch_utils", types.ModuleType("torch_utils"))
    monkeypatch.setitem(sys.modules, "torch_utils.persistence", persistence)

    class Persistent:
        def __reduce__(self):
            meta = {"type": "class", "version": 4, "class_name": "Discriminator",
                    "module_src": f"open({str(target)!r}, 'w').write('x')",
                    "state": {"_parameters": {"w": torch.ones(2)}, "_buffers": {}, "_modules": {}}}
            return _reconstruct_persistent_obj, (meta,)

    data = pickle.dumps({"D": Persistent()})
    record = load_network_pickle(data, module_prefixes=())["D"]
    assert isinstance(record, ModuleRecord) and record.class_path.endswith("Discriminator")
    assert torch.equal(record.state["_parameters"]["w"], torch.ones(2)) and not target.exists()


def test_truncated_or_foreign_files_give_one_message(tmp_path, release_modules):
    write_release_pickle(R3GANDiscriminator(**LAYOUT), release_modules, tmp_path / "d.pkl")
    (tmp_path / "cut.pkl").write_bytes((tmp_path / "d.pkl").read_bytes()[:500])
    with pytest.raises(GasbenchError, match="not a readable network pickle"):
        load_r3gan_discriminator(tmp_path / "cut.pkl")
    (tmp_path / "nod.pkl").write_bytes(pickle.dumps({"G": None}))
    with pytest.raises(GasbenchError, match="no discriminator 'D'"):
        load_r3gan_discriminator(tmp_path / "nod.pkl")
    with pytest.raises(GasbenchError, match="does not exist"):
        load_r3gan_discriminator(tmp_path / "missing.pkl")


def test_gas_trains_with_a_release_discriminator(release_modules, tmp_path, gmm_pairs):
    gmm = TEACHERS.get("gmm")()
    network = R3GANDiscriminator(channels=1, widths=[8], cardinalities=[2], blocks=[1], expansion=2)
    write_release_pickle(network, release_modules, tmp_path / "d.pkl")
    gas = SOLVERS.get("gas")(discriminator=str(tmp_path / "d.pkl"), iterations=3, batch_size=8, train_size=96, disc_lr=1e-2)
    gas.fit(gmm, 2, *gmm_pairs, progress=False)
    before = dict(network.named_parameters())
    assert any(not torch.equal(p, before[k]) for k, p in gas.discriminator.named_parameters())
    assert isinstance(SOLVERS.get("gas")(discriminator="r3gan").make_discriminator(TEACHERS.get("digits")()), R3GANDiscriminator)


def test_release_stages_with_their_recorded_data_type_load(release_modules, tmp_path):
    """R3GAN's stages keep ``DataType`` in their state (Networks.py:119; bfloat16 for the first
    stages of the released checkpoints, train.py:273-279), which a pickle names as torch.float32 /
    torch.bfloat16: inert dtypes the reader must admit for the released files to load. gasbench
    computes every stage in float32."""
    original = perturbed(R3GANDiscriminator(**LAYOUT))
    for i, stage in enumerate(original.Model.MainLayers):
        stage.DataType = torch.bfloat16 if i < len(LAYOUT["widths"]) - 1 else torch.float32
    write_release_pickle(original, release_modules, tmp_path / "d.pkl")
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(load_r3gan_discriminator(tmp_path / "d.pkl")(x), release_forward(original.state_dict(), x))


def _teacher(name: str):
    return types.SimpleNamespace(name=name)  # all ``r3gan-pretrained`` asks of a teacher


def test_pretrained_discriminator_missing_gives_one_message_naming_file_and_source(monkeypatch, tmp_path):
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("GASBENCH_OFFLINE", "1")
    gas = SOLVERS.get("gas")(discriminator="r3gan-pretrained")
    for teacher, repo in (("cifar10", "R3GAN-CIFAR10"), ("ffhq", "R3GAN-FFHQ-64x64"), ("afhqv2", "R3GAN-FFHQ-64x64")):
        with pytest.raises(GasbenchError) as error:
            gas.make_discriminator(_teacher(teacher))
        message = str(error.value)
        assert PRETRAINED[teacher].filename in message and str(tmp_path / "weights") in message
        assert f"https://huggingface.co/brownvc/{repo}/resolve/main/network-snapshot-final.pkl" in message
        assert "discriminator=PATH" in message and "GASBENCH_OFFLINE" in message
    with pytest.raises(GasbenchError, match="no pretrained R3GAN discriminator for teacher 'lsun-bedroom'"):
        gas.make_discriminator(_teacher("lsun-bedroom"))


def test_pretrained_ffhq_discriminator_is_found_in_the_weights_directory(monkeypatch, tmp_path, release_modules):
    """The unconditional FFHQ-64 layout (one output, no embedding), placed where the message says,
    is what GAS fine-tunes on AFHQv2 (release configs/edm/afhqv2.yaml:39)."""
    monkeypatch.setenv("GASBENCH_HOME", str(tmp_path))
    monkeypatch.setenv("GASBENCH_OFFLINE", "1")
    original = perturbed(R3GANDiscriminator(channels=3, widths=[8, 16, 16, 16, 16], cardinalities=[2, 4, 4, 4, 4],
                                            blocks=[1, 1, 1, 1, 1], expansion=2))
    (tmp_path / "weights").mkdir()
    write_release_pickle(original, release_modules, tmp_path / "weights" / PRETRAINED["ffhq"].filename)
    loaded = SOLVERS.get("gas")(discriminator="r3gan-pretrained").make_discriminator(_teacher("afhqv2"))
    x = torch.randn(2, 3, 64, 64)
    assert loaded.Model.resolution == 64
    torch.testing.assert_close(loaded(x), release_forward(original.state_dict(), x))
