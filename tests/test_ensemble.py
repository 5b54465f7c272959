"""Ensembles: members, budget, weights (given, normalised, tuned), search, and their refusals."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from raytrain8m.commands import ensemble as ensemble_command
from raytrain8m.compose.ensemble import (
    format_table,
    make_ensemble,
    normalise_weights,
    resolve_members,
    search,
    tune_weights,
)
from raytrain8m.records.predictions import PredictionStore
from raytrain8m.runtime.errors import BudgetError, CheckpointError, ConfigError

from _ensemble_helpers import constant_checkpoint, tiny_config, trained_members, write_zoo


@pytest.fixture(scope="module")
def members(synthetic_dir, tmp_path_factory):
    """Two tiny members (K4-H16, K8-H24) trained for 300 Adam steps on the synthetic train split."""
    return trained_members(synthetic_dir, tmp_path_factory.getbasetemp() / "trained-members")


@pytest.fixture
def validate(synthetic_dir):
    return str(synthetic_dir / "validate*.tfrecord")


def _spec(paths):
    return ",".join(str(path) for path in paths)


def test_the_tuned_ensemble_beats_its_best_member_on_validate(members, validate, tmp_path):
    # Members trained by train_locally (tests/_ensemble_helpers.py) on the session data.
    result = make_ensemble(_spec(members), tmp_path / "out", tune=True, validate_data=validate,
                           progress=False, track=False)
    best_member = max(member.gap for member in result.members)
    assert 0.3 < best_member < 1
    assert result.validate_gap > best_member + 0.002, (result.validate_gap, best_member)
    assert sum(result.weights) == pytest.approx(1) and all(w > 0 for w in result.weights)
    saved = json.loads((tmp_path / "out" / "ensemble.json").read_text())
    assert saved["validate_gap"] == pytest.approx(result.validate_gap)
    assert [m["gap"] for m in saved["members"]] == [m.gap for m in result.members]


def test_over_budget_is_an_error_and_writes_nothing_unless_the_budget_is_raised(members, tmp_path):
    size = sum(m.fp16_mib for m in resolve_members(_spec(members)))
    with pytest.raises(BudgetError, match="over the budget"):
        make_ensemble(_spec(members), tmp_path / "out", budget_mib=size * 0.9, track=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())
    result = make_ensemble(_spec(members), None, budget_mib=size * 1.1, track=False)
    assert result.size_mib == pytest.approx(size)


def test_an_unknown_zoo_letter_is_an_error_naming_it(members, tmp_path):
    zoo = write_zoo(tmp_path / "zoo.json", members, "AB")
    assert [m.letter for m in resolve_members("BA", zoo)] == ["B", "A"]
    with pytest.raises(ConfigError, match="'Z'"):
        make_ensemble("AZ", tmp_path / "out", zoo_path=zoo, track=False)
    assert not (tmp_path / "out").exists()


def test_a_weight_count_mismatch_is_an_error(members, tmp_path):
    with pytest.raises(ConfigError, match="1 weights for 2 members"):
        make_ensemble(_spec(members), tmp_path / "out", weights=[1.0], track=False)
    assert not (tmp_path / "out").exists()


def test_weights_not_summing_to_one_are_normalised_with_a_warning(members, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="raytrain8m.compose.ensemble"):
        make_ensemble(_spec(members), tmp_path / "out", weights=[3.0, 1.0], track=False)
    assert "normalising" in caplog.text
    assert json.loads((tmp_path / "out" / "ensemble.json").read_text())["weights"] == [0.75, 0.25]
    with pytest.raises(ConfigError):
        normalise_weights([1.0, -1.0], 2)


def test_a_missing_checkpoint_is_an_error_and_writes_nothing(members, tmp_path):
    with pytest.raises(CheckpointError, match="nowhere"):
        make_ensemble(_spec([members[0], tmp_path / "nowhere"]), tmp_path / "out", track=False)
    assert not (tmp_path / "out").exists()


def test_tune_weights_stays_on_the_simplex_and_moves_off_equal_weights_when_one_member_is_noise(tmp_path):
    # Built so that equal weights must lose: `good` ranks every positive first (GAP 1.0 alone),
    # `noise` ranks at random, and their mean (GAP ≈ 0.68) mixes noise into each video's top 20.
    # A tuner that stayed at equal weights, its starting point, fails here.
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 20)) < 0.1).astype(np.float32)
    good = np.clip(labels * 0.6 + rng.random((200, 20)) * 0.5, 0, 1).astype(np.float32)
    noise = rng.random((200, 20)).astype(np.float32)
    cached = PredictionStore.from_arrays(tmp_path / "store", [good, noise], labels)
    weights, gap = tune_weights(cached)
    assert sum(weights) == pytest.approx(1) and min(weights) >= 0
    assert cached.gap([1.0, 0.0]) == pytest.approx(1.0) and cached.gap([0.5, 0.5]) < 0.8
    assert weights[0] > weights[1] and gap == pytest.approx(cached.gap(weights))
    assert gap == pytest.approx(cached.gap([1.0, 0.0]))  # as good as the good member alone


def test_search_ranks_the_zoo_combinations_that_fit_the_budget(members, validate, tmp_path):
    # C predicts one constant for every class and video: A+C ranks exactly as A, so AB (which beats
    # both its members, see above) must come first whatever the members learned.
    extra = constant_checkpoint(tmp_path / "constant", tiny_config(4, 16), step=1)
    zoo = write_zoo(tmp_path / "zoo.json", [*members, extra], "ABC")
    sizes = [m.fp16_mib for m in resolve_members("ABC", zoo)]
    budget = sizes[0] + sizes[1] + 0.01  # A+B fits, A+B+C does not
    rows, _ = search(zoo, validate, budget, progress=False)
    assert {row["members"] for row in rows} == {"A", "B", "C", "AB", "AC", "BC"}
    gaps = [row["gap"] for row in rows]
    assert gaps == sorted(gaps, reverse=True) and rows[0]["members"] == "AB", rows
    gap_of = {row["members"]: row["gap"] for row in rows}
    assert gap_of["AC"] == pytest.approx(gap_of["A"], abs=1e-4) and gap_of["BC"] == pytest.approx(gap_of["B"], abs=1e-4)
    table = format_table(rows)
    assert "size MiB" in table and table.splitlines()[2].split()[1] == "AB"


def test_ensemble_job_reports_errors_once_with_exit_code_2(members, tmp_path, capsys):
    job = ensemble_command
    code = job.main(["--members", _spec(members), "--out", str(tmp_path / "out"), "--weights", "0.5,0.3,0.2",
                     "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "weights for 2 members" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    assert job.main(["--members", "AB", "--out", str(tmp_path / "out"), "--no-track"]) == 2
    assert "zoo" in capsys.readouterr().err


def test_negative_weights_are_taken_as_a_value_and_refused(tmp_path, capsys):
    job = ensemble_command
    assert job.parse_args(["--members", "AB", "--weights", "-1,2"]).weights == "-1,2"  # not a flag
    code = job.main(["--members", "AB", "--weights", "-1,2", "--out", str(tmp_path / "out"), "--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --weights must be >= 0") and len(err.strip().splitlines()) == 1
