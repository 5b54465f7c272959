"""`jobs/evaluate.py`: a checkpoint's metrics on a labelled split, printed and logged to MLflow."""
from __future__ import annotations

import json

import numpy as np
import pytest

from raytrain8m.commands import evaluate as evaluate_command
from raytrain8m.records import tracking
from raytrain8m.records.evaluate import load_predictor
from raytrain8m.records.metrics import gap

from _ensemble_helpers import load_split, random_checkpoint, tiny_config


def test_evaluate_job_prints_the_metrics_and_logs_them_to_mlflow(synthetic_dir, tmp_path, monkeypatch, capsys):
    checkpoint = random_checkpoint(tmp_path / "ckpt", tiny_config(4, 16), seed=3, step=7)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = str(synthetic_dir / "validate*.tfrecord")
    code = evaluate_command.main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress"])
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

    assert evaluate_command.main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress",
                                      "--no-track"]) == 0
    assert len(tracking.find_runs(filter_string="tags.stage = 'evaluate'", uri=uri)) == 1
    assert evaluate_command.main(["--checkpoint", str(checkpoint), "--data", data, "--no-progress",
                                      "--no-track", "--map"]) == 0
    with_map = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 < with_map["map"] <= 1 and with_map["gap"] == printed["gap"]


@pytest.mark.parametrize("split, message", [
    ("test*.tfrecord", "videos without labels: evaluation needs a labelled split"),
    ("empty*.tfrecord", r"empty0000.tfrecord: empty file \(0 bytes\)"),
])
def test_evaluate_on_an_unlabelled_split_or_an_empty_file_is_one_error_line_and_exit_2(
        synthetic_dir, tmp_path, monkeypatch, capsys, split, message):
    import re
    import shutil

    checkpoint = random_checkpoint(tmp_path / "ckpt", tiny_config(4, 16), seed=3, step=7)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = tmp_path / "data"
    data.mkdir()
    for path in synthetic_dir.glob("test*.tfrecord"):
        shutil.copy(path, data / path.name)
    (data / "empty0000.tfrecord").write_bytes(b"")
    code = evaluate_command.main(["--checkpoint", str(checkpoint), "--data", str(data / split),
                                      "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err) and "Traceback" not in err
    assert not tracking.find_runs(uri=uri)  # no run left behind, RUNNING or otherwise


def test_evaluate_flags_are_checked_before_anything_is_loaded(tmp_path, capsys):
    import subprocess
    import sys
    from pathlib import Path

    job = Path(__file__).resolve().parents[1] / "jobs" / "evaluate.py"
    done = subprocess.run([sys.executable, str(job), "--checkpoint", str(tmp_path), "--data", str(tmp_path),
                           "--batch-size", "0"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: argument --batch-size: must be >= 1, got 0")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr


def test_skip_corrupt_leaves_out_a_corrupt_record_and_counts_it(synthetic_dir, tmp_path, capsys):
    import shutil

    checkpoint = random_checkpoint(tmp_path / "ckpt", tiny_config(4, 16), seed=3, step=7)
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(synthetic_dir / "validate0000.tfrecord", data / "validate0000.tfrecord")
    raw = bytearray((data / "validate0000.tfrecord").read_bytes())
    raw[40] ^= 0xFF  # inside the first record's data: its data CRC no longer matches
    (data / "validate0000.tfrecord").write_bytes(bytes(raw))
    job = evaluate_command
    flags = ["--checkpoint", str(checkpoint), "--data", str(data / "validate*.tfrecord"), "--no-progress",
             "--no-track"]
    assert job.main(flags) == 2
    assert "validate0000.tfrecord, record 0: data CRC mismatch" in capsys.readouterr().err
    assert job.main([*flags, "--skip-corrupt"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["skipped_records"] == 1 and printed["examples"] > 0
