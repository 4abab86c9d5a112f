"""R3GAN discriminators: a pickle written in the release's format loads without running its code;
pickles that carry code are refused and their payload never runs."""

from __future__ import annotations

import copy
import os
import pickle
import sys
import types

import pytest
import torch
from torch import nn

from gasbench.errors import GasbenchError
from gasbench.registry import SOLVERS, TEACHERS
from gasbench.safe_pickle import ModuleRecord, load_network_pickle
from gasbench.solvers import r3gan
from gasbench.solvers.r3gan import R3GANDiscriminator, load_r3gan_discriminator

# where each of our classes lives in the R3GAN release (training/networks.py, R3GAN/*.py)
RELEASE_NAMES = {
    r3gan.R3GANDiscriminator: ("training.networks", "Discriminator"),
    r3gan.R3GANBody: ("R3GAN.Networks", "Discriminator"),
    r3gan.DiscriminatorStage: ("R3GAN.Networks", "DiscriminatorStage"),
    r3gan.ResidualBlock: ("R3GAN.Networks", "ResidualBlock"),
    r3gan.Convolution: ("R3GAN.Networks", "Convolution"),
    r3gan.DownsampleLayer: ("R3GAN.Networks", "DownsampleLayer"),
    r3gan.DiscriminativeBasis: ("R3GAN.Networks", "DiscriminativeBasis"),
    r3gan.BiasedActivation: ("R3GAN.FusedOperators", "BiasedActivation"),
    r3gan.Downsampler: ("R3GAN.Resamplers", "InterpolativeDownsampler"),
}
LAYOUT = {"channels": 3, "widths": [16, 32, 32], "cardinalities": [2, 4, 4], "blocks": [1, 2, 1], "expansion": 2,
          "num_classes": 10, "embedding": 8}


@pytest.fixture
def release_modules(monkeypatch):
    """Stand-ins for the release's modules, present only while a test writes its pickle."""
    modules = {}
    for module_name, _ in RELEASE_NAMES.values():
        for part in range(1, module_name.count(".") + 2):
            name = ".".join(module_name.split(".")[:part])
            modules.setdefault(name, types.ModuleType(name))
    modules["dnnlib"], modules["dnnlib.util"] = types.ModuleType("dnnlib"), types.ModuleType("dnnlib.util")
    modules["dnnlib.util"].EasyDict = type("EasyDict", (dict,), {"__module__": "dnnlib.util"})
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return modules


def write_release_pickle(network: nn.Module, modules, path, extra=None) -> None:
    """Pickle ``network`` as the release does: its modules are instances of the release's classes."""
    network = copy.deepcopy(network)
    for ours, (module_name, class_name) in RELEASE_NAMES.items():
        if not hasattr(modules[module_name], class_name):
            setattr(modules[module_name], class_name, type(class_name, (nn.Module,), {"__module__": module_name}))
    for module in network.modules():
        if type(module) in RELEASE_NAMES:
            module_name, class_name = RELEASE_NAMES[type(module)]
            module.__class__ = getattr(modules[module_name], class_name)
    kwargs = modules["dnnlib.util"].EasyDict(resolution=16, c_dim=10)
    path.write_bytes(pickle.dumps({"G": None, "D": network, "augment_pipe": None, "training_set_kwargs": kwargs,
                                   **(extra or {})}, protocol=4))


def test_release_pickle_loads_into_our_network_with_identical_outputs(release_modules, tmp_path):
    torch.manual_seed(0)
    original = R3GANDiscriminator(**LAYOUT)
    with torch.no_grad():  # the zero-initialised last convolutions would hide wrong wiring
        for p in original.parameters():
            p.add_(0.05 * torch.randn_like(p))
    write_release_pickle(original, release_modules, tmp_path / "network-snapshot.pkl")
    for name in list(release_modules):
        sys.modules.pop(name)  # a user's machine has no R3GAN code to import
    loaded = load_r3gan_discriminator(tmp_path / "network-snapshot.pkl")
    x, classes = torch.randn(3, 3, 16, 16), torch.tensor([0, 4, 9])
    torch.testing.assert_close(loaded(x, classes), original(x, classes), rtol=0, atol=0)
    assert loaded.Model.resolution == 16
    # a lower-resolution teacher is resized to the discriminator's resolution
    assert loaded(torch.randn(2, 3, 8, 8), torch.tensor([1, 2])).shape == (2,)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return os.system, (f"touch {self.target}",)


def test_a_pickle_with_a_code_payload_is_refused_and_never_runs(release_modules, tmp_path):
    target = tmp_path / "pwned"
    write_release_pickle(R3GANDiscriminator(**LAYOUT), release_modules, tmp_path / "evil.pkl",
                         extra={"payload": _Payload(target)})
    with pytest.raises(GasbenchError, match="system'.*refusing"):
        load_r3gan_discriminator(tmp_path / "evil.pkl")
    assert not target.exists()
    with pytest.raises(GasbenchError, match="builtins.eval"):
        load_network_pickle(pickle.dumps(_Evil()), module_prefixes=("R3GAN.",))


class _Evil:
    def __reduce__(self):
        return eval, ("1 + 1",)


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
