"""The paper's split: how many validate files are held out, and which files train and score."""
from __future__ import annotations

import pytest

from raytrain8m.records.holdout import holdout_count, make_split
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.train.config import TrainConfig
from raytrain8m.train.driver import split_data


@pytest.mark.parametrize("files,expected", [(3844, 60), (1000, 16), (64, 2), (4, 2), (2, 2), (1, 1)])
def test_auto_holds_out_the_papers_share_at_least_two_files(files, expected):
    assert holdout_count("auto", files) == expected


def test_a_holdout_larger_than_the_validate_set_or_not_a_number_is_refused():
    assert holdout_count("3", 10) == 3 and holdout_count(0, 10) == 0
    with pytest.raises(ConfigError, match="11: there are 10"):
        holdout_count("11", 10)
    with pytest.raises(ConfigError, match="auto, 0 or a number"):
        holdout_count("half", 10)
    with pytest.raises(ConfigError, match="holdout"):
        TrainConfig(holdout="-1")


def test_split_trains_on_the_rest_chooses_on_one_half_reports_on_the_other(tmp_path):
    for name in [f"train{i}.tfrecord" for i in range(3)] + [f"validate{i}.tfrecord" for i in range(6)]:
        (tmp_path / name).write_bytes(b"x")  # listed, never read (empty files are refused)
    train, validate = str(tmp_path / "train*.tfrecord"), str(tmp_path / "validate*.tfrecord")
    split = make_split(train, validate, "4")
    assert split == make_split(train, validate, "4")  # seeded: the same files every run
    held = set(split.choose) | set(split.report)
    assert len(split.choose) == len(split.report) == 2 and split.separate and len(held) == 4
    assert not held & set(split.train) and len(split.train) == 3 + 2
    assert {name.rsplit("/", 1)[1] for name in split.train} >= {"train0.tfrecord", "train2.tfrecord"}
    assert "choices on 2, reported GAPs on the other 2" in split.describe()
    none = make_split(train, validate, "0")
    assert len(none.train) == 3 and none.choose == none.report and len(none.choose) == 6
    config, applied = split_data(TrainConfig(train_data=train, validate_data=validate, holdout="4"))
    assert applied == split and config.is_split and sorted(config.validate_data) == sorted(held)
    assert config.params()["train_data"] == "5 files (see split.json)"
