"""Inference: the Kaggle CSV, restart from finished parts, and clear refusals."""
from __future__ import annotations

import numpy as np
import pytest

from raytrain8m.commands import infer as infer_command
from raytrain8m.compose.ensemble import member_from_checkpoint
from raytrain8m.compose.export import export_ensemble
from raytrain8m.compose.infer import HEADER, format_rows, infer
from raytrain8m.data.schema import DataError
from raytrain8m.records import tracking

from _ensemble_helpers import random_checkpoint, tiny_config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("infer-model")
    members = [member_from_checkpoint(random_checkpoint(root / name, tiny_config(k, h), seed=seed, step=1))
               for name, k, h, seed in (("a", 4, 16, 1), ("b", 8, 24, 2))]
    return export_ensemble(members, [0.5, 0.5], root / "export")


def test_rows_hold_the_20_most_confident_pairs_most_confident_first_with_6_decimals():
    rng = np.random.default_rng(0)
    predictions = rng.random((2, 50)).astype(np.float32)
    rows = format_rows(["v1", "v2"], predictions)
    for row, scores in zip(rows, predictions):
        video_id, pairs = row.split(",")
        tokens = pairs.split(" ")
        labels = [int(t) for t in tokens[::2]]
        assert len(labels) == 20 and labels == list(np.argsort(-scores)[:20])
        assert all(len(t.split(".")[1]) == 6 for t in tokens[1::2])
    assert format_rows(["few"], np.array([[0.1, 0.9, 0.5]]))[0] == "few,1 0.900000 2 0.500000 0 0.100000"


@pytest.mark.slow
def test_inference_writes_the_csv_and_a_restart_redoes_only_unfinished_files(
        exported, synthetic_dir, tmp_path, ray_session, monkeypatch):
    out = tmp_path / "submission.csv"
    data = str(synthetic_dir / "test*.tfrecord")
    first = infer(exported, data, out, batch_size=4, progress=False)
    assert first.files >= 2 and first.processed == first.files and first.skipped == 0
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == HEADER and len(lines) == 1 + first.videos
    assert len({line.split(",")[0] for line in lines[1:]}) == first.videos

    parts = sorted((tmp_path / "submission.csv.parts").glob("*.csv"))
    assert len(parts) == first.files
    out.unlink()
    parts[0].unlink()  # as if the run had stopped before this file finished
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    second = infer(exported, data, out, batch_size=4, progress=False, track=True)
    assert second.skipped == first.files - 1 and second.processed == 1
    assert out.read_text() == text
    (run,) = tracking.find_runs(filter_string="tags.stage = 'infer'", uri=uri)
    assert run.data.params["out"] == str(out) and run.data.params["model"] == str(exported)
    assert run.data.metrics["files_done_before"] == first.files - 1
    assert run.data.metrics["videos"] == second.videos > 0


@pytest.mark.slow
def test_input_files_replaced_at_the_same_paths_are_predicted_again_saying_why(
        exported, synthetic_dir, tmp_path, ray_session, caplog):
    import logging
    import shutil

    from raytrain8m.data.synthetic import generate

    data = tmp_path / "data"
    data.mkdir()
    for path in synthetic_dir.glob("test*.tfrecord"):
        shutil.copy(path, data / path.name)
    out = tmp_path / "submission.csv"
    first = infer(exported, str(data / "test*.tfrecord"), out, batch_size=4, progress=False)
    stale = out.read_text()
    # New videos under the same names (the same ids: the generator numbers them in order).
    generate(str(tmp_path / "other"), videos=120, classes=20, max_frames=12, shards=2, seed=1, progress=False)
    for path in (tmp_path / "other").glob("test*.tfrecord"):
        shutil.copy(path, data / path.name)
    with caplog.at_level(logging.WARNING, logger="raytrain8m.compose.infer"):
        second = infer(exported, str(data / "test*.tfrecord"), out, batch_size=4, progress=False)
    assert second.skipped == 0 and second.processed == first.files
    assert caplog.text.count("changed since its predictions were made") == first.files
    fresh = infer(exported, str(tmp_path / "other" / "test*.tfrecord"), tmp_path / "fresh.csv", batch_size=4,
                  progress=False)
    assert out.read_text() == (tmp_path / "fresh.csv").read_text() != stale
    assert fresh.videos == second.videos


def _write_video_without_id(path):
    import tensorflow as tf

    from raytrain8m.data.tfrecord import write_records

    example = tf.train.SequenceExample()
    for name, size in (("rgb", 1024), ("audio", 128)):
        feature = example.feature_lists.feature_list[name].feature.add()
        feature.bytes_list.value.append(bytes(size))
    write_records(str(path), [example.SerializeToString()])


@pytest.mark.slow
def test_a_test_file_without_ids_is_a_data_error_naming_the_file_and_no_csv(
        exported, synthetic_dir, tmp_path, ray_session):
    bad = tmp_path / "data" / "test9999.tfrecord"
    _write_video_without_id(bad)
    out = tmp_path / "submission.csv"
    with pytest.raises(DataError, match="test9999.tfrecord"):
        infer(exported, [str(synthetic_dir / "test*.tfrecord"), str(bad)], out, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no half-written CSV


def test_infer_job_reports_a_missing_model_once_with_exit_code_2(tmp_path, synthetic_dir, capsys):
    code = infer_command.main(["--model", str(tmp_path / "none"), "--data",
                                   str(synthetic_dir / "test*.tfrecord"), "--out", str(tmp_path / "x.csv")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()


def _exit_code(main, argv) -> int:
    """A job's exit status, whether argparse exits (a bad flag) or main returns."""
    try:
        return main(argv)
    except SystemExit as exit_:
        return exit_.code


@pytest.mark.parametrize("flags, message", [
    (["--workers", "0"], "error: argument --workers: must be >= 1, got 0"),
    (["--batch-size", "0"], "error: argument --batch-size: must be >= 1, got 0"),
    (["--out", "{tmp}/a-file/submission.csv"], "error: --out {tmp}/a-file/submission.csv: {tmp}/a-file is a file"),
    (["--data", "{tmp}/empty*.tfrecord"], "error: {tmp}/empty0000.tfrecord: empty file (0 bytes)"),
])
def test_bad_infer_flags_and_inputs_are_one_error_line_and_exit_2(
        exported, synthetic_dir, tmp_path, capsys, flags, message):
    (tmp_path / "a-file").write_text("")
    (tmp_path / "empty0000.tfrecord").write_bytes(b"")
    given = {"--model": str(exported), "--data": str(synthetic_dir / "test*.tfrecord"),
             "--out": str(tmp_path / "x.csv")}
    given.update({flag: value.format(tmp=tmp_path) for flag, value in zip(flags[::2], flags[1::2])})
    code = _exit_code(infer_command.main, [item for pair in given.items() for item in pair] + ["--no-track"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith(message.format(tmp=tmp_path)) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.csv").exists()
