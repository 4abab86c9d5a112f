"""Runs split over processes (torchrun, gloo, 2 CPU processes) give what one process gives.

Evaluation records, sample grids and trajectory shards are byte-identical; a data-parallel fit
ends with the same parameters on every rank, equal to a single-process fit up to the order of
the gradient summation.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import distributed_work
from safetensors.torch import load_file

from gasbench.core.records import without_volatile

RUN = ["run", "-d", "gmm", "-m", "euler,dpmpp2m,ipndm", "--nfe", "3,5", "-n", "600", "--batch-size", "64",
       "--metrics", "rmse,psnr,fd,precision", "--results-dir", "results"]
FITS = ("gs", "gas", "ld3", "dlms")  # gas: its discriminator too; ld3: the relaxed objective's offsets
FIT_OPTIONS = {"iterations": 4, "batch_size": 7, "lr": 1e-2}  # 7: the ranks' slices differ (3 and 4)


def _torchrun(args: list[str], cwd: Path) -> None:
    """``python``-style arguments (a script, or -m and a module) in 2 processes under torchrun."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GASBENCH_OFFLINE": "1", "GASBENCH_HOME": str(cwd / "home")}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    done = subprocess.run([*launcher, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.fixture
def one_process(monkeypatch, tmp_path):
    """A directory to run one process in, here, as the torchrun children run: one thread, own home."""
    cwd = tmp_path / "one"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("GASBENCH_HOME", str(cwd / "home"))
    torch.set_num_threads(1)
    return cwd


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern))}


def _record(data: bytes) -> str:
    return json.dumps(without_volatile(json.loads(data)), indent=2, sort_keys=True)


@pytest.mark.slow
def test_two_processes_write_the_records_and_caches_of_one(one_process, tmp_path, monkeypatch):
    from gasbench.cli import main

    one, two = one_process, tmp_path / "two"
    monkeypatch.setattr(sys, "argv", ["gasbench", *RUN])
    main()
    two.mkdir()
    _torchrun(["-m", "gasbench", *RUN], two)
    records = {cwd: _files(cwd / "results", "**/metrics.json") for cwd in (one, two)}
    # the teacher's row and 3 methods x 2 NFE
    assert len(records[one]) == 7 and records[two].keys() == records[one].keys()
    for path, data in records[one].items():
        assert _record(records[two][path]) == _record(data), path
    assert _files(two / "results", "**/*.png") == _files(one / "results", "**/*.png")
    # 600 evaluation seeds are 3 shards of 256; the real images' pixel features are cached too
    for pattern in ("home/trajectories/**/*.*", "home/reference_features/**/*.npz"):
        cached = _files(one, pattern)
        assert cached and _files(two, pattern) == cached, pattern
    assert len(_files(one, "home/trajectories/**/shard-*.safetensors")) == 3


def test_one_process_is_left_alone(monkeypatch):
    from gasbench.core import distributed

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.init_from_env()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    items = torch.arange(5.0)
    assert torch.equal(distributed.shard(items), items)
    assert distributed.gather(items) is items and distributed.total(5) == 5
    parameter = torch.zeros(2, requires_grad=True)
    parameter.grad = torch.ones(2)
    distributed.average_gradients([parameter], count=3)
    assert torch.equal(parameter.grad, torch.ones(2))


WORKER = """import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from helpers import distributed_work
distributed_work(Path({out!r}), {fits!r}, {options!r})
"""


def test_primitives_sampling_features_and_data_parallel_fits(one_process, tmp_path):
    distributed_work(one_process, FITS, FIT_OPTIONS)
    two = tmp_path / "two"
    two.mkdir()
    worker = WORKER.format(tests=str(Path(__file__).parent), out=str(two), fits=FITS, options=FIT_OPTIONS)
    (two / "worker.py").write_text(worker)
    _torchrun(["worker.py"], two)
    single = load_file(str(one_process / "rank0.safetensors"))
    rank0, rank1 = (load_file(str(two / f"rank{r}.safetensors")) for r in range(2))
    assert rank0.keys() == rank1.keys() == single.keys()
    for key in rank0.keys() - {"batches"}:  # every rank ends with the same tensors
        assert torch.equal(rank0[key], rank1[key]), key
    assert torch.equal(rank0["gathered"], torch.arange(7.0).reshape(7, 1))
    assert rank0["empty_block"].shape == (1, 2)
    assert bool(rank0["refused"]) and not bool(single["refused"])
    torch.testing.assert_close(rank0["average"], torch.full((3,), 11 / 7), rtol=1e-6, atol=0)
    # 37 seeds in batches of 8: 5 batches, rank 0 solves the first 2, rank 1 the other 3; each
    # hears of the rest once gathered
    assert single["batches"].tolist() == [8, 8, 8, 8, 5]
    assert rank0["batches"].tolist() == [8, 8, 21] and rank1["batches"].tolist() == [8, 8, 5, 16]
    for key in ("samples", "features"):
        assert torch.equal(rank0[key], single[key]), key
    for method in FITS:
        initial, trained = single[f"{method}.initial"], single[f"{method}.trained"]
        parallel = rank0[f"{method}.trained"]
        moved = (trained - initial).abs().max()
        assert moved > 1e-4, method  # the fit did move the parameters
        # float32 samples and losses: the two-slice gradient is the one-batch gradient up to the
        # rounding of float32 sums (~1e-7 relative), which four Adam steps carry into the
        # parameters at under 1e-7 of the distance they moved (measured: 3e-8 at most); an
        # unweighted average of the slices of 3 and 4 pairs changes them by 7-38% of it
        assert (parallel - trained).abs().max() <= 1e-4 * moved, method
    # offsets of about 0.02, equal to 1e-10 (measured)
    torch.testing.assert_close(rank0["ld3.offsets"], single["ld3.offsets"], rtol=0, atol=1e-7)
