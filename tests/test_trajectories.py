"""The teacher-trajectory cache: resumable, byte-identical, and loud about damage."""

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
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
    assert TrajectoryCache(gmm_teacher, (1, 2, 3), root=tmp_path).digest != before
    with pytest.raises(GasbenchError, match="contiguous"):
        TrajectoryCache(gmm_teacher, (1, 3), root=tmp_path)  # the key names a range: first, last, count


KILL_SCRIPT = """
import sys, time, torch
from gasbench.teachers.gmm import GaussianMixtureTeacher
from gasbench.trajectories import TrajectoryCache

class SlowGMM(GaussianMixtureTeacher):
    def denoise(self, x, sigma, cond):
        time.sleep(float(sys.argv[1]))
        return super().denoise(x, sigma, cond)

torch.set_num_threads(1)
g = torch.Generator().manual_seed(0)
teacher = SlowGMM(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), 0.3)
TrajectoryCache(teacher, tuple(range(40)), shard_size=5, states=3).generate()
"""


def test_sigkill_during_generation_then_rerun_gives_identical_shards(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from gasbench.teachers.gmm import GaussianMixtureTeacher

    script = tmp_path / "generate.py"
    script.write_text(KILL_SCRIPT)

    def home(name, delay):
        env = {**os.environ, "GASBENCH_HOME": str(tmp_path / name), "OMP_NUM_THREADS": "1"}
        return [sys.executable, str(script), str(delay)], env

    command, env = home("full", 0)
    subprocess.run(command, check=True, env=env)
    command, env = home("killed", 0.01)  # 50 evaluations per shard: about 0.5 s a shard
    victim = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 60
    while not list((tmp_path / "killed").glob("trajectories/*/*/shard-00001.safetensors")):
        assert victim.poll() is None and time.monotonic() < deadline, "generation ended before it could be killed"
        time.sleep(0.01)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    [directory] = list((tmp_path / "killed").glob("trajectories/*/*"))
    assert 2 <= len(list(directory.glob("shard-*.safetensors"))) < 8  # killed mid-way
    # what a kill during a write leaves behind: a partial temporary file next to the shards
    (directory / ".shard-00007.safetensors.x1y2z3.tmp").write_bytes(b"partial")
    command, env = home("killed", 0)
    subprocess.run(command, check=True, env=env)

    [reference] = list((tmp_path / "full").glob("trajectories/*/*"))
    assert reference.name == directory.name
    written = {p.name: p.read_bytes() for p in directory.glob("shard-*.safetensors")}
    assert written == {p.name: p.read_bytes() for p in reference.glob("shard-*.safetensors")}
    assert len(written) == 8
    # no temporary file is named like a shard, so none can be read as one
    leftovers = [p.name for p in directory.iterdir() if p.name not in written and p.name != "manifest.json"]
    assert ".shard-00007.safetensors.x1y2z3.tmp" in leftovers
    assert all(name.startswith(".") and name.endswith(".tmp") for name in leftovers)
    g = torch.Generator().manual_seed(0)
    same = GaussianMixtureTeacher(torch.randn(3, 1, 4, 4, generator=g, dtype=torch.float64), 0.3)
    cache = TrajectoryCache(same, tuple(range(40)), shard_size=5, states=3, root=tmp_path / "killed" / "trajectories")
    assert cache.directory == directory
    data = cache.load()
    assert torch.equal(data["seeds"], torch.arange(40)) and data["trajectory"].shape == (40, 3, 1, 4, 4)


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


def test_missing_tensor_or_wrong_shape_is_refused(gmm_teacher, tmp_path):
    from safetensors.torch import load, save

    cache = TrajectoryCache(gmm_teacher, tuple(range(8)), shard_size=4, root=tmp_path)
    cache.generate()
    good = cache.shard_path(1).read_bytes()
    tensors = load(good)
    cache.shard_path(1).write_bytes(save({k: v for k, v in tensors.items() if k != "x0"}, {"key": cache.digest}))
    with pytest.raises(GasbenchError, match=r"shard-00001.safetensors lacks x0; delete it and rerun"):
        cache.load()
    cache.shard_path(1).write_bytes(save({**tensors, "x0": tensors["x0"][:3]}, {"key": cache.digest}))
    with pytest.raises(GasbenchError, match=r"has x0 \(3, 1, 4, 4\) instead of \(4, 1, 4, 4\)"):
        cache.load()
    cache.shard_path(1).unlink()
    with pytest.raises(GasbenchError, match="shard-00001.safetensors is missing"):
        cache.load()
    cache.generate()
    assert cache.shard_path(1).read_bytes() == good


def test_intermediate_states(gmm_teacher, tmp_path):
    seeds = tuple(range(6))
    plain = TrajectoryCache(gmm_teacher, seeds, root=tmp_path)
    with_states = TrajectoryCache(gmm_teacher, seeds, root=tmp_path, states=5)
    assert plain.digest != with_states.digest
    plain.generate()
    with_states.generate()
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
    with pytest.raises(GasbenchError, match="cannot keep 51 states of a 50-step"):
        TrajectoryCache(gmm_teacher, seeds, root=tmp_path / "too-many", states=51).generate()
    assert not (tmp_path / "too-many").exists()


def test_named_splits_are_disjoint(gmm_teacher):
    train = TrajectoryCache.for_split(gmm_teacher, "train")
    validation = TrajectoryCache.for_split(gmm_teacher, "validation", size=50)
    evaluation = TrajectoryCache.for_split(gmm_teacher, "evaluation", size=10)
    assert (train.seeds[0], len(train.seeds)) == (0, 1400)
    assert (validation.seeds[0], validation.seeds[-1]) == (40_000, 40_049)
    assert evaluation.seeds[0] == 50_000
    assert TrajectoryCache.for_split(gmm_teacher, "train", size=40_000).seeds[-1] == 39_999
    assert TrajectoryCache.for_split(gmm_teacher, "validation", size=10_000).seeds[-1] == 49_999
    assert TrajectoryCache.for_split(gmm_teacher, "evaluation").seeds[-1] == 99_999
    assert TrajectoryCache.for_split(gmm_teacher, "validation", states=4).states == 4
    with pytest.raises(GasbenchError, match="overlap the next split: the validation split starts at seed 40,000"):
        TrajectoryCache.for_split(gmm_teacher, "train", size=40_001)
    with pytest.raises(GasbenchError, match="overlap the next split: the evaluation split starts at seed 50,000"):
        TrajectoryCache.for_split(gmm_teacher, "validation", size=10_001)
    with pytest.raises(GasbenchError, match="at least 1 sample"):
        TrajectoryCache.for_split(gmm_teacher, "validation", size=0)
    with pytest.raises(GasbenchError, match="unknown split 'test'; choose one of train, validation, evaluation"):
        TrajectoryCache.for_split(gmm_teacher, "test")
