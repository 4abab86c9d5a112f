"""GAS under its own conditions: the pre-trained compact discriminator GAS can start from, and the
GS/GAS curves fitted in segments (resumable, the same fit as one long run)."""

import json

import pytest
import torch

from gasbench.core.errors import GasbenchError
from gasbench.core.registry import SOLVERS
from gasbench.gas_curve import curve_markdown, fit_curves, pretrain_discriminator
from gasbench.solvers.discriminator import load_compact, pretrained_compact_file
from gasbench.teachers.load import load_teacher


@pytest.fixture(scope="module")
def digits():
    return load_teacher("digits")


def test_pretrained_discriminator_is_saved_for_its_teacher_and_starts_gas(digits, tmp_path):
    info = pretrain_discriminator(digits, nfe=2, iterations=40, pairs=60, progress=False)
    assert info["path"] == str(pretrained_compact_file(digits)) and 0 <= info["held_out_ranked_right"] <= 1
    disc = load_compact(digits)
    gas = SOLVERS.get("gas")(discriminator="compact-pretrained")
    gas.start_training(digits, 2)
    for key, value in disc.state_dict().items():
        assert torch.equal(gas.discriminator.state_dict()[key], value)
    # trained: no longer the random initialisation GAS would otherwise start from
    fresh = SOLVERS.get("gas")()
    fresh.start_training(digits, 2)
    assert any(not torch.equal(fresh.discriminator.state_dict()[k], v) for k, v in disc.state_dict().items())
    from gasbench.gas_curve import gradient_ratio

    assert gradient_ratio(digits, "compact", nfe=2, batch_size=4) > 0
    other = load_teacher("gmm")
    other.shape = digits.shape
    with pytest.raises(GasbenchError, match="pre-trained for teacher 'digits'"):
        load_compact(other, pretrained_compact_file(digits))
    with pytest.raises(GasbenchError, match="gasbench bench pretrain-discriminator -d gmm"):
        load_compact(other)


@pytest.mark.slow
def test_curves_in_segments_equal_one_long_fit_and_resume(digits, tmp_path):
    methods = {"gs": {"train_size": 24}, "gas": {"train_size": 24}}
    seed_sets = [list(range(50_000, 50_030)), list(range(50_030, 50_060))]
    curve = fit_curves(digits, methods, 2, [0, 2, 4], seed_sets, tmp_path / "curve")
    assert [(r["method"], r["iterations"]) for r in curve["rows"]] == [(m, k) for k in (0, 2, 4) for m in methods]
    assert all(len(r["fd"]) == 2 and len(r["kd"]) == 2 for r in curve["rows"])
    # the milestone-0 solvers are the shared start: GS and GAS begin from the same solver
    start = {r["method"]: r["fd"] for r in curve["rows"] if r["iterations"] == 0}
    assert start["gs"] == start["gas"]
    # four iterations fitted as 2 + 2 are the four of one fit
    whole = SOLVERS.get("gs")(train_size=24, iterations=4, patience=0, validate_every=0)
    from gasbench.gas_curve import _pairs

    whole.fit(digits, 2, _pairs(digits, "train", 24), _pairs(digits, "validation", whole.validation_size), progress=False)
    segmented = [r for r in curve["rows"] if r["method"] == "gs" and r["iterations"] == 4][0]
    assert segmented["validation_loss"] == pytest.approx(whole.summary["final_validation_loss"], rel=1e-9)
    # the same command again computes nothing; a longer one only the new milestone
    again = fit_curves(digits, methods, 2, [0, 2, 4, 6], seed_sets, tmp_path / "curve")
    assert len(again["rows"]) == 8 and again["rows"][:6] == curve["rows"]
    table = curve_markdown(again, "gs", "gas")
    assert table.count("\n") == 2 + 4 and "gas - gs fd" in table
    with pytest.raises(GasbenchError, match="another setting"):
        fit_curves(digits, methods, 3, [0], seed_sets, tmp_path / "curve")
    assert json.loads((tmp_path / "curve" / "curve.json").read_text())["setting"]["nfe"] == 2


def test_curve_milestones_are_cells_the_claims_test(tmp_path):
    from gasbench.claims import recorded_cells

    curve = {"setting": {"teacher": "fashion", "nfe": 4, "seed_sets": [[0, 9], [10, 19], [20, 29]],
                         "methods": {"gs": {}, "gas": {"adv_weight": "1.0"}}},
             "rows": [{"method": "gs", "iterations": 1000, "fd": [3.0, 2.0, 4.0], "kd": [0.1, 0.1, 0.2]},
                      {"method": "gas", "iterations": 1000, "fd": [2.0, 1.0, 3.1], "kd": [0.1, 0.1, 0.2]}]}
    (tmp_path / "fashion" / "gas-curve").mkdir(parents=True)
    (tmp_path / "fashion" / "gas-curve" / "curve.json").write_text(json.dumps(curve))
    cells = recorded_cells(tmp_path)
    gas = cells[("fashion", "gas+adv_weight=1.0+iterations=1000+patience=0+validate_every=0", 4)]
    assert gas["metrics_per_seed_set"]["fd"] == [2.0, 1.0, 3.1] and gas["seeds"] == [[0, 9], [10, 19], [20, 29]]
    assert ("fashion", "gs+iterations=1000+patience=0+validate_every=0", 4) in cells
