"""Checkpoint averaging: the elementwise mean of model variables, refusals, the --auto search.
The mean and the search run on the shared training run's real checkpoints (conftest's `trained`)."""
from __future__ import annotations

import numpy as np
import pytest

from raytrain8m.commands import average as average_command
from raytrain8m.models import variable_specs
from raytrain8m.records.checkpoint import load_checkpoint, read_state, save_checkpoint
from raytrain8m.runtime.errors import CheckpointError
from raytrain8m.select.average import auto_average, average, candidate_ranges, resolve_checkpoints, select

from _ensemble_helpers import random_checkpoint, tiny_config


def _run(tmp_path, count=3, config=None):
    config = config or tiny_config()
    rng = np.random.default_rng(0)
    paths = []
    for index in range(count):
        extra = {"tower/hidden1_bn/moving_mean": rng.normal(size=config.hidden_size).astype(np.float32),
                 "optimizer/tower/hidden1_weights/m": np.full((3,), index, np.float32),
                 "optimizer/iterations": np.array(index * 10, np.int64)}
        paths.append(random_checkpoint(tmp_path / "run" / f"ckpt-{index}", config, seed=index,
                                       step=(index + 1) * 10, extra=extra))
    return paths


def test_nextvlad_checkpoints_average_and_compress_by_their_own_variables(tmp_path):
    from raytrain8m.compose.compress import to_fp16
    from raytrain8m.models import half_tensors

    config = tiny_config(family="nextvlad")
    paths = [random_checkpoint(tmp_path / f"nx-{seed}", config, seed=seed, step=seed + 1) for seed in range(2)]
    averaged = load_checkpoint(average(paths, tmp_path / "avg"))
    inputs = [load_checkpoint(path) for path in paths]
    assert averaged.config == config
    assert set(averaged.tensors) == {spec.name for spec in variable_specs(config)}
    assert "tower/video_NeXtVLAD/vlad_bn/moving_variance" in averaged.tensors
    for name, value in averaged.tensors.items():
        np.testing.assert_allclose(value, (inputs[0].tensors[name] + inputs[1].tensors[name]) / 2, rtol=1e-6, atol=1e-7)
    config16, tensors16 = to_fp16(config, averaged.tensors)
    assert {name for name, value in tensors16.items() if value.dtype == np.float16} == set(half_tensors(config16))


@pytest.mark.slow
def test_average_is_the_elementwise_mean_including_moving_statistics(trained, tmp_path):
    """On the checkpoints the real training loop wrote (optimizer slots, EMA, batch norm statistics)."""
    paths = trained.checkpoints
    out = average(paths, tmp_path / "avg")
    averaged = load_checkpoint(out)
    inputs = [load_checkpoint(path) for path in paths]
    names = {spec.name for spec in variable_specs(averaged.config)}
    assert any(name.startswith("optimizer/") for name in inputs[0].tensors)
    assert any(name.startswith("ema/") for name in inputs[0].tensors)
    assert set(averaged.tensors) == names  # optimizer slots, the EMA and the step counter left out
    for name in names:
        expected = np.mean([checkpoint.tensors[name] for checkpoint in inputs], axis=0)
        np.testing.assert_allclose(averaged.tensors[name], expected, rtol=1e-6, atol=1e-7)
    moving = [c.tensors["tower/gating_bn/moving_mean"] for c in inputs]
    assert not np.allclose(moving[0], moving[-1])  # the statistics moved in training, and were averaged
    steps = [checkpoint.step for checkpoint in inputs]
    assert averaged.step == steps[-1] and averaged.state["range"] == [steps[0], steps[-1]]
    assert averaged.state["averaged_from"] == [str(p) for p in paths]


def test_averaging_different_models_is_refused_naming_both_paths_and_the_key(tmp_path):
    small = random_checkpoint(tmp_path / "small", tiny_config(4, 16), seed=0, step=1)
    large = random_checkpoint(tmp_path / "large", tiny_config(8, 24), seed=0, step=2)
    with pytest.raises(CheckpointError) as caught:
        average([small, large], tmp_path / "avg")
    message = str(caught.value)
    assert str(small) in message and str(large) in message and "cluster_size" in message
    assert not (tmp_path / "avg").exists()


def test_averaging_a_tensor_of_another_shape_is_refused_naming_the_tensor(tmp_path):
    config = tiny_config()
    good = random_checkpoint(tmp_path / "good", config, seed=0, step=1)
    tensors = dict(load_checkpoint(good).tensors)
    tensors["tower/hidden2_biases"] = np.zeros(5, np.float32)
    bad = save_checkpoint(tmp_path / "bad", config, tensors, step=2)
    with pytest.raises(CheckpointError, match="tower/hidden2_biases"):
        average([good, bad], tmp_path / "avg")


def test_a_run_directory_resolves_to_its_checkpoints_and_a_step_range_selects_them(tmp_path):
    paths = _run(tmp_path, count=4)
    assert resolve_checkpoints([tmp_path / "run"]) == paths
    assert select(paths, 20, 30) == paths[1:3]
    with pytest.raises(CheckpointError):
        resolve_checkpoints([tmp_path / "nowhere"])


@pytest.mark.parametrize("count,best", [(2, 0), (5, 2), (10, 9), (20, 4)])
def test_candidate_ranges_surround_the_best_checkpoint(count, best):
    ranges = candidate_ranges(count, best, max_ranges=8)
    assert ranges and len(ranges) == len(set(ranges)) <= 8
    for start, end in ranges:
        assert 0 <= start <= best <= end < count and end - start >= 1


@pytest.mark.slow
def test_auto_average_keeps_the_best_range_around_the_best_checkpoint_and_logs_to_mlflow(
        trained, netvlad_data, tmp_path, monkeypatch):
    """On the shared training run's checkpoints: the kept range holds the best single checkpoint,
    its GAP is that of the checkpoint written (evaluated again here, not copied), and the
    choice goes to MLflow."""
    from raytrain8m.records import tracking
    from raytrain8m.records.evaluate import evaluate_checkpoint

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    validate = str(netvlad_data / "validate*.tfrecord")
    summary = auto_average([trained.run_dir], validate, tmp_path / "best", max_ranges=3, progress=False)
    assert [row["step"] for row in summary.singles] == [read_state(path)["step"] for path in trained.checkpoints]
    assert 1 <= len(summary.candidates) <= 3
    best = max(summary.singles, key=lambda row: row["gap"])
    start, end = summary.averaged_range
    assert start <= best["step"] <= end and start < end
    assert summary.averaged_gap == max(row["gap"] for row in summary.candidates)
    assert summary.best_single_gap == best["gap"]
    state = load_checkpoint(tmp_path / "best").state
    assert state["averaged_gap"] == summary.averaged_gap and state["range"] == [start, end]
    assert evaluate_checkpoint(tmp_path / "best", validate, progress=False)["gap"] == pytest.approx(
        summary.averaged_gap, abs=1e-6)
    assert set(summary.averaged_from) <= {str(p) for p in trained.checkpoints}
    runs = tracking.find_runs()
    assert runs and runs[0].data.metrics["averaged_gap"] == pytest.approx(summary.averaged_gap)


def test_average_job_prints_one_error_line_and_exits_2(tmp_path, capsys):
    small = random_checkpoint(tmp_path / "small", tiny_config(4, 16), seed=0, step=1)
    large = random_checkpoint(tmp_path / "large", tiny_config(8, 24), seed=0, step=2)
    code = average_command.main([str(small), str(large), "--out", str(tmp_path / "avg")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "avg").exists()
