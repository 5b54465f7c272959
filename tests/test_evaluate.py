"""`jobs/evaluate.py`: a checkpoint's metrics on a labelled split, printed and logged to MLflow."""
from __future__ import annotations

import json

import numpy as np
import pytest

from _ensemble_helpers import load_job, load_split, random_checkpoint, tiny_config
from raytrain8m import tracking
from raytrain8m.evaluate import load_predictor
from raytrain8m.metrics import gap


def test_evaluate_job_prints_the_metrics_and_logs_them_to_mlflow(synthetic_dir, tmp_path, monkeypatch, capsys):
    checkpoint = random_checkpoint(tmp_path / "ckpt", tiny_config(4, 16), seed=3, step=7)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = str(synthetic_dir / "validate*.tfrecord")
    code = load_job("evaluate").main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # the job's GAP is the official definition over the whole split, predicted here independently
    frames, num_frames, labels = load_split(synthetic_dir, "validate")
    predict, _ = load_predictor(checkpoint)
    assert printed["gap"] == pytest.approx(gap(predict(frames, num_frames), labels), abs=1e-6)
    assert (printed["model"], printed["step"], printed["examples"]) == ("K4-H16", 7, len(labels))
    assert printed["map"] is None  # mAP holds every prediction: opt-in

    (run,) = tracking.find_runs(filter_string="tags.stage = 'evaluate'", uri=uri)
    assert run.info.run_name == "evaluate K4-H16@7" and run.data.params["checkpoint"] == str(checkpoint)
    assert run.data.metrics["gap"] == pytest.approx(printed["gap"])
    assert np.isfinite(run.data.metrics["hit_at_one"])

    assert load_job("evaluate").main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress",
                                      "--no-track"]) == 0
    assert len(tracking.find_runs(filter_string="tags.stage = 'evaluate'", uri=uri)) == 1
    assert load_job("evaluate").main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress",
                                      "--no-track", "--map"]) == 0
    with_map = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < with_map["map"] <= 1 and with_map["gap"] == printed["gap"]
