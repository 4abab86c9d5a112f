"""The teacher-trajectory cache: resumable, byte-identical, and loud about damage."""

import pytest
import torch

from gasbench.errors import GasbenchError
from gasbench.registry import SOLVERS
from gasbench.sampling import sample_seeds
from gasbench.trajectories import TrajectoryCache, describe_caches


def shards(cache):
    return {p.name: p.read_bytes() for p in sorted(cache.directory.glob("shard-*"))}


def test_interrupted_generation_resumes_to_identical_shards(gmm_teacher, tmp_path):
    seeds = tuple(range(100, 150))
    full = TrajectoryCache(gmm_teacher, seeds, shard_size=16, root=tmp_path / "a")
    full.generate()

    interrupted = TrajectoryCache(gmm_teacher, seeds, shard_size=16, root=tmp_path / "b")
    calls = []

    def stop_after_two(n):
        calls.append(n)
        if len(calls) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        interrupted.generate(on_samples=stop_after_two)
    assert len(shards(interrupted)) == 2
    interrupted.generate()
    assert shards(interrupted) == shards(full) and len(shards(full)) == 4


def test_cache_holds_the_reference_solutions(gmm_teacher, tmp_path):
    seeds = tuple(range(10))
    cache = TrajectoryCache(gmm_teacher, seeds, shard_size=4, root=tmp_path)
    cache.generate()
    data = cache.load()
    ref = gmm_teacher.reference
    table = SOLVERS.get(ref.solver)(schedule=ref.schedule, **ref.options).table(gmm_teacher, ref.nfe)
    assert torch.equal(data["seeds"], torch.arange(10))
    assert torch.equal(data["x0"], sample_seeds(gmm_teacher, table, list(seeds), 3))
    [row] = describe_caches(tmp_path)
    assert row["samples"] == 10 and row["shards"] == "3/3"


def test_corrupt_shard_and_foreign_key_are_clear_errors(gmm_teacher, tmp_path):
    cache = TrajectoryCache(gmm_teacher, tuple(range(8)), shard_size=4, root=tmp_path)
    cache.generate()
    cache.shard_path(1).write_bytes(cache.shard_path(1).read_bytes()[:100])
    with pytest.raises(GasbenchError, match="shard-00001.safetensors is corrupt"):
        cache.load()
    other = TrajectoryCache(gmm_teacher, tuple(range(8, 16)), shard_size=4, root=tmp_path)
    other.generate()
    cache.shard_path(1).write_bytes(other.shard_path(0).read_bytes())
    with pytest.raises(GasbenchError, match="belongs to another cache key"):
        cache.generate()


def test_key_changes_with_teacher_weights(gmm_teacher, tmp_path):
    before = TrajectoryCache(gmm_teacher, (1, 2), root=tmp_path).digest
    gmm_teacher.weights_sha256 = "different"
    assert TrajectoryCache(gmm_teacher, (1, 2), root=tmp_path).digest != before
    assert TrajectoryCache(gmm_teacher, (1, 3), root=tmp_path).digest != before


KILL_SCRIPT = """
import sys, time, torch
from gasbench.teachers.gmm import GaussianMixtureTeacher
from gasbench.trajectories import TrajectoryCache

class SlowGMM(GaussianMixtureTeacher):
    def denoise(self, x, sigma, cond):
        time.sleep(float(sys.argv[2]))
        return super().denoise(x, sigma, cond)

g = torch.Generator().manual_seed(0)
teacher = SlowGMM(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), 0.3)
TrajectoryCache(teacher, tuple(range(40)), shard_size=5, root=__import__("pathlib").Path(sys.argv[1])).generate(batch_size=5)
"""


def test_sigkill_during_generation_then_rerun_gives_identical_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "generate.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "full"), "0"], check=True, env=env)
    victim = subprocess.Popen([sys.executable, str(script), str(tmp_path / "killed"), "0.01"], env=env)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "killed").glob("*/*/shard-00001.safetensors")):
        assert victim.poll() is None and time.monotonic() < deadline, "generation ended before it could be killed"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    [directory] = list((tmp_path / "killed").glob("*/*"))
    assert 2 <= len(list(directory.glob("shard-*.safetensors"))) < 8  # killed mid-way
    subprocess.run([sys.executable, str(script), str(tmp_path / "killed"), "0"], check=True, env=env)
    [reference] = list((tmp_path / "full").glob("*/*"))
    assert reference.name == directory.name
    written = {p.name: p.read_bytes() for p in directory.glob("shard-*.safetensors")}
    assert written == {p.name: p.read_bytes() for p in reference.glob("shard-*.safetensors")}
    assert len(written) == 8
    # a temporary file left by the kill is never named like a shard
    assert all(p.name.startswith("shard-") or p.name == "manifest.json" or p.name.endswith(".tmp")
               for p in directory.iterdir())


def test_shard_with_other_seeds_is_refused(gmm_teacher, tmp_path):
    cache = TrajectoryCache(gmm_teacher, tuple(range(8)), shard_size=4, root=tmp_path)
    cache.generate()
    cache.shard_path(0).write_bytes(cache.shard_path(1).read_bytes())  # same key, wrong seeds
    with pytest.raises(GasbenchError, match="holds other seeds"):
        cache.load()
    cache.shard_path(0).unlink()
    cache.shard_path(1).write_bytes(b"\x00" * 64)
    with pytest.raises(GasbenchError, match="shard-00001.safetensors is corrupt"):
        TrajectoryCache(gmm_teacher, tuple(range(8)), shard_size=4, root=tmp_path).generate()


def test_intermediate_states(gmm_teacher, tmp_path):
    seeds = tuple(range(6))
    plain = TrajectoryCache(gmm_teacher, seeds, root=tmp_path)
    with_states = TrajectoryCache(gmm_teacher, seeds, root=tmp_path, states=5)
    assert plain.digest != with_states.digest
    plain.generate()
    with_states.generate(batch_size=4)
    data = with_states.load()
    assert torch.equal(data["x0"], plain.load()["x0"])
    assert data["trajectory"].shape == (6, 5, *gmm_teacher.shape)
    sigmas = data["trajectory_sigmas"]
    assert sigmas.shape == (5,) and bool((sigmas[1:] < sigmas[:-1]).all())
    assert float(sigmas[0]) == pytest.approx(gmm_teacher.sigma_max)
    assert torch.allclose(data["trajectory"][:, 0], data["noise"] * gmm_teacher.sigma_max)
    assert with_states.state_indices(50) == [0, 12, 24, 37, 49]
    row = next(r for r in describe_caches(tmp_path) if r["states"] == 5)
    assert row["samples"] == 6


def test_named_splits_are_disjoint(gmm_teacher):
    train = TrajectoryCache.for_split(gmm_teacher, "train")
    validation = TrajectoryCache.for_split(gmm_teacher, "validation", size=50)
    evaluation = TrajectoryCache.for_split(gmm_teacher, "evaluation", size=10)
    assert (train.seeds[0], len(train.seeds)) == (0, 1400)
    assert (validation.seeds[0], validation.seeds[-1]) == (40_000, 40_049)
    assert evaluation.seeds[0] == 50_000
    with pytest.raises(GasbenchError, match="overlap the next split"):
        TrajectoryCache.for_split(gmm_teacher, "train", size=40_001)
    with pytest.raises(GasbenchError, match="unknown split 'test'"):
        TrajectoryCache.for_split(gmm_teacher, "test")
