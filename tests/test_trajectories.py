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
    assert torch.allclose(data["x0"], sample_seeds(gmm_teacher, table, list(seeds), 3), atol=1e-6)
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
