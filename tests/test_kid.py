"""KID and the domain KD: clean-fid's unbiased kernel distance, seeded, registered with provenance.

The Inception test runs the real FID network and skips, saying why, when it cannot be resolved
(as in tests/test_metrics.py); everything else uses synthetic features or gmm's pixel space.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from cleanfid.fid import kernel_distance
from helpers import gasbench

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import TEACHERS
from gasbench.fid import fid_from_features
from gasbench.metrics import KID_NUM_SUBSETS, Evaluation, get_metric, kid_from_features


@pytest.fixture(scope="module")
def gmm():
    return TEACHERS.get("gmm")()


def normal_sets(seed: int, n: int, shift: float = 0.0, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Two independent standard-normal feature sets, the first moved by ``shift`` in every coordinate."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)) + shift, rng.normal(size=(n, dim))


def mean_and_se(values: list[float]) -> tuple[float, float]:
    return float(np.mean(values)), float(np.std(values, ddof=1) / np.sqrt(len(values)))


def test_kid_of_a_distribution_against_itself_is_zero_on_average_where_fd_is_biased():
    """Unbiased: over independent draws of 40 the mean KID is within 4 standard errors of 0 and
    single values go negative; the FD of the same draws sits far above 0 (its 1/n bias)."""
    pairs = [normal_sets(seed, 40) for seed in range(20)]
    kids = [kid_from_features(a, b) for a, b in pairs]
    (kid_mean, kid_se), (fd_mean, fd_se) = mean_and_se(kids), mean_and_se([fid_from_features(a, b) for a, b in pairs])
    assert abs(kid_mean) < 4 * kid_se
    assert min(kids) < 0
    assert fd_mean > 4 * fd_se


def test_kid_is_the_same_quantity_at_any_sample_count_where_fd_is_not():
    """A fixed mean shift: the mean KID over draws of 40 agrees with that over draws of 200 within
    4 combined standard errors; the FD of the same draws does not (its bias shrinks with n)."""
    small = [normal_sets(seed, 40, shift=0.3) for seed in range(40)]
    large = [normal_sets(100 + seed, 200, shift=0.3) for seed in range(10)]
    for distance, agrees in ((kid_from_features, True), (fid_from_features, False)):
        (m_small, se_small), (m_large, se_large) = (mean_and_se([distance(a, b) for a, b in sets]) for sets in (small, large))
        assert m_large > 0
        assert (abs(m_small - m_large) < 4 * np.hypot(se_small, se_large)) == agrees


def test_kid_grows_with_a_mean_shift():
    values = [kid_from_features(*normal_sets(0, 200, shift=shift)) for shift in (0.0, 0.25, 0.5, 1.0)]
    assert abs(values[0]) < 0.05 * values[-1]
    assert values == sorted(values)


def test_kid_is_clean_fid_kernel_distance_after_seeding_numpy_with_0():
    """More real vectors than samples, so the subsets are random draws and the seed matters."""
    rng = np.random.default_rng(3)
    fake, real = rng.normal(size=(60, 8)) + 0.2, rng.normal(size=(300, 8))
    np.random.seed(0)
    expected = kernel_distance(real, fake, num_subsets=100, max_subset_size=1000)
    np.random.seed(1)
    other_seed = kernel_distance(real, fake)
    assert KID_NUM_SUBSETS == 100
    assert kid_from_features(fake, real) == expected
    assert other_seed != expected


def test_kid_is_deterministic_and_leaves_numpy_global_generator_alone():
    rng = np.random.default_rng(4)
    fake, real = rng.normal(size=(50, 8)), rng.normal(size=(120, 8))
    np.random.seed(123)
    first, second = kid_from_features(fake, real), kid_from_features(fake, real)
    after = np.random.random()
    np.random.seed(123)
    assert first == second
    assert after == np.random.random()


def test_kid_needs_two_vectors_on_each_side():
    with pytest.raises(GasbenchError, match="at least 2 samples"):
        kid_from_features(np.zeros((1, 4)), np.zeros((10, 4)))
    assert np.isfinite(kid_from_features(np.eye(4)[:2], np.eye(4)))


def test_kd_metric_on_gmm_pixels_is_registered_with_provenance(gmm):
    kd = get_metric("kd")
    assert kd.direction == "lower" and not kd.paired
    provenance = kd.describe(gmm)
    assert provenance["space"] == "pixels" and provenance["network"] == "identity (decoded pixels)"
    assert provenance["subsets"] == 100 and "seeded 0" in provenance["subset_seed"]
    assert "raw" in kd.description and "unbiased" in provenance["estimator"]
    real = gmm.sample_data(200, seed=7).float()
    good, shifted = Evaluation(real, None, gmm), Evaluation(real + 0.5, None, gmm)
    assert kd.compute(good) == kid_from_features(good.features("pixels"), good.real_features("pixels"))
    assert abs(kd.compute(good)) < 0.1 * kd.compute(shifted)


def test_kd_in_a_run_record_and_listed(monkeypatch, capsys, tmp_path):
    code, out, err = gasbench(monkeypatch, capsys, "run", "-d", "gmm", "-m", "euler", "--nfe", "3", "-n", "60",
                              "--metrics", "kd", "--results-dir", tmp_path)
    assert code == 0, err
    records = {r["method"]: r for r in (json.loads(p.read_text()) for p in tmp_path.rglob("metrics.json"))}
    assert set(records) == {"teacher", "euler"}
    for record in records.values():
        assert np.isfinite(record["metrics"]["kd"])
        assert record["metric_provenance"]["kd"]["space"] == "pixels"
        assert record["metric_provenance"]["kd"]["subsets"] == 100
    code, out, err = gasbench(monkeypatch, capsys, "list", "metrics")
    assert code == 0 and re.search(r"\bkid\b", out) and re.search(r"\bkd\b", out)


def test_kid_metric_on_inception_features(gmm, small_inception):
    """KID through the registered metric: the record names the FID network, a shifted set scores worse."""
    fid = small_inception
    kid = get_metric("kid")
    provenance = kid.describe(gmm)
    assert provenance["network"] == fid.FID_NETWORK_NAME and provenance["reference"]["count"] == 16
    real = gmm.sample_data(16, seed=7).float()
    near = Evaluation(real, None, gmm)
    assert kid.compute(near) == kid_from_features(near.features("inception"), near.real_features("inception"))
    assert kid.compute(near) < kid.compute(Evaluation(real + 0.5, None, gmm))
