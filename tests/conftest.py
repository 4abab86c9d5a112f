import copy
import sys

import pytest
import torch

from gasbench.teachers.gmm import GaussianMixtureTeacher


def pytest_collection_modifyitems(config, items):
    """Tests marked ``crash`` (the SIGKILL sweep over every fault point) run only when selected
    with ``-m crash``; the default run skips them and says how to run them."""
    if "crash" in config.getoption("markexpr"):
        return
    skip = pytest.mark.skip(reason="the SIGKILL sweep over every fault point (about ten minutes): `pytest -m crash`")
    for item in items:
        if item.get_closest_marker("crash"):
            item.add_marker(skip)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep caches (trajectories, metric weights) out of the user's home during tests, and run
    each `gasbench run` as one process unless a test asks for --jobs."""
    import os

    previous = os.environ.get("GASBENCH_HOME")
    os.environ["GASBENCH_HOME"] = str(tmp_path_factory.mktemp("gasbench_home"))
    os.environ["GASBENCH_JOBS"] = "1"
    yield
    if previous is None:
        os.environ.pop("GASBENCH_HOME")
    else:
        os.environ["GASBENCH_HOME"] = previous


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(2)


@pytest.fixture
def gmm_teacher() -> GaussianMixtureTeacher:
    """A small analytic teacher with well-separated modes in 16 dimensions."""
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 1, 4, 4, generator=g, dtype=torch.float64) * 0.8
    return GaussianMixtureTeacher(means, std=0.25)


@pytest.fixture(scope="session")
def gmm():
    """The built-in analytic teacher (``gasbench run -d gmm``)."""
    from gasbench.core.registry import TEACHERS

    return TEACHERS.get("gmm")()


@pytest.fixture(scope="session")
def gmm_pairs(tmp_path_factory):
    """Train (96) and validation (48) pairs of (noise, x0) of the built-in ``gmm`` teacher, for fits."""
    from gasbench.core.registry import TEACHERS
    from gasbench.trajectories import TrajectoryCache

    gmm, root = TEACHERS.get("gmm")(), tmp_path_factory.mktemp("gmm_pairs")
    splits = [TrajectoryCache.for_split(gmm, split, size=size, root=root) for split, size in (("train", 96), ("validation", 48))]
    for cache in splits:
        cache.generate()
    return tuple({k: v for k, v in cache.load().items() if k in ("noise", "x0")} for cache in splits)


@pytest.fixture
def resumed_fit(gmm, gmm_pairs, tmp_path):
    """``check(method, config, first, total)``: fit ``total`` iterations at once, and again as a
    fit of ``first`` iterations checkpointed then resumed with the larger budget; asserts the two
    end bit-identical (parameters, and the relaxed objective's start offsets) and returns
    (uninterrupted, resumed, checkpoint path)."""
    from gasbench.core.registry import SOLVERS

    def check(method: str, config: dict, first: int, total: int, nfe: int = 3):
        checkpoint = tmp_path / "fit-checkpoint.pt"
        whole = SOLVERS.get(method)(**config, iterations=total)
        whole.fit(gmm, nfe, *gmm_pairs, progress=False)
        SOLVERS.get(method)(**config, iterations=first).fit(gmm, nfe, *gmm_pairs, progress=False, checkpoint_path=checkpoint)
        resumed = SOLVERS.get(method)(**config, iterations=total)
        assert resumed.fit(gmm, nfe, *gmm_pairs, progress=False, checkpoint_path=checkpoint).resumed_at == first
        for key in whole.params:
            assert torch.equal(resumed.params[key], whole.params[key]), key
        if whole.start_offsets is not None:
            assert torch.equal(resumed.start_offsets, whole.start_offsets)
        return whole, resumed, checkpoint

    return check


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Results of one small `gasbench run` (gmm; euler, dpmpp3m, heun; NFE 4 and 6), once per module."""
    from gasbench.cli import main

    results = tmp_path_factory.mktemp("cli") / "results"
    argv = sys.argv
    sys.argv = ["gasbench", "run", "--dataset", "gmm", "--methods", "euler,dpmpp3m,heun",
                "--nfe", "4,6", "-n", "32", "--results-dir", str(results)]
    try:
        main()
    finally:
        sys.argv = argv
    return results


@pytest.fixture
def recording(monkeypatch):
    """gasbench's EDM classes record their constructor arguments, as EDM's persistent classes do."""
    from gasbench.teachers import edm_networks

    for cls in edm_networks.NETWORK_CLASSES.values():
        def init(self, *args, _init=cls.__init__, **kwargs):
            _init(self, *args, **kwargs)
            self._init_args, self._init_kwargs = args, copy.deepcopy(kwargs)

        monkeypatch.setattr(cls, "__init__", init)


@pytest.fixture
def small_inception(monkeypatch):
    """The FID Inception network (skips the test where it cannot be resolved offline or from
    PyPI), its reference features capped at 16 real images."""
    from gasbench import fid
    from gasbench.core.errors import GasbenchError
    from gasbench.features import FEATURE_SPACES

    try:
        fid.resolve_fid_inception()
    except GasbenchError as exc:
        pytest.skip(f"FID network unavailable here: {exc}")
    monkeypatch.setattr(FEATURE_SPACES["inception"], "max_reference_images", 16)
    return fid
