"""Export: fp16 storage, the TF1 MetaGraph contract in a fresh process, atomic writes, compression."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from raytrain8m.compose.compress import compress_checkpoint
from raytrain8m.compose.ensemble import member_from_checkpoint
from raytrain8m.compose.export import export_ensemble
from raytrain8m.compose.infer import load_model
from raytrain8m.models import BIG_TENSORS, ModelConfig, built_size
from raytrain8m.records.checkpoint import load_checkpoint
from raytrain8m.records.evaluate import load_predictor
from raytrain8m.runtime.errors import ConfigError

from _ensemble_helpers import FRESH_PROCESS, assert_the_starters_way_matches_the_csv, random_checkpoint, tiny_config


@pytest.fixture
def two_members(tmp_path):
    paths = [random_checkpoint(tmp_path / "a", tiny_config(4, 16), seed=1, step=1),
             random_checkpoint(tmp_path / "b", tiny_config(8, 24), seed=2, step=1)]
    return [member_from_checkpoint(path) for path in paths]


def _inputs(videos=5, frames=30, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, (videos, frames, 1152)).astype(np.float32),
            np.array([frames, 1, 7, 12, frames][:videos], np.int32))


def test_the_export_stores_big_tensors_as_float16_and_predicts_as_fp32_within_1e_3(two_members, tmp_path):
    out = export_ensemble(two_members, [0.7, 0.3], tmp_path / "export")
    reader = tf.train.load_checkpoint(str(out / "inference_model" / "inference_model"))
    dtypes = reader.get_variable_to_dtype_map()
    for index in range(2):
        for name in BIG_TENSORS:
            assert dtypes[f"member{index}/{name}"] == tf.float16
        assert dtypes[f"member{index}/tower/hidden2_weights"] == tf.float32
        assert dtypes[f"member{index}/tower/gating_bn/moving_mean"] == tf.float32
    frames, num_frames = _inputs()
    fp32 = sum(w * load_predictor(m.checkpoint)[0](frames, num_frames) for w, m in zip([0.7, 0.3], two_members))
    for source in ("meta_graph", "saved_model"):
        np.testing.assert_allclose(load_model(out, source)(frames, num_frames), fp32, atol=1e-3)
    flags = json.loads((out / "model_flags.json").read_text())
    assert flags["feature_names"] == "rgb,audio" and flags["feature_sizes"] == "1024,128"
    assert flags["frame_features"] is True and flags["label_loss"] == "CrossEntropyLoss"
    assert (out / "inference_model" / "model_flags.json").is_file()  # where the starter's --train_dir looks
    summary = json.loads((out / "ensemble.json").read_text())
    assert summary["weights"] == [0.7, 0.3]
    assert summary["size_mib"] == pytest.approx(sum(m.fp16_mib for m in two_members), abs=1e-3)




@pytest.mark.slow
def test_the_metagraph_loaded_the_tf1_way_in_a_fresh_process_matches_the_infer_csv(
        two_members, synthetic_dir, tmp_path, ray_session):
    out = export_ensemble(two_members, [0.6, 0.4], tmp_path / "export")
    assert_the_starters_way_matches_the_csv(out, str(synthetic_dir / "test*.tfrecord"), tmp_path)


@pytest.mark.slow
def test_an_ensemble_of_a_nextvlad_and_a_gated_netvlad_runs_the_starters_way(tmp_path):
    from raytrain8m.models import half_tensors

    nextvlad = tiny_config(4, 16, family="nextvlad")
    paths = [random_checkpoint(tmp_path / "nx", nextvlad, seed=4, step=1),
             random_checkpoint(tmp_path / "gnv", tiny_config(4, 16), seed=5, step=1)]
    members = [member_from_checkpoint(path) for path in paths]
    assert [m.config.family for m in members] == ["nextvlad", "gated_netvlad"]
    out = export_ensemble(members, [0.5, 0.5], tmp_path / "export")
    dtypes = tf.train.load_checkpoint(str(out / "inference_model" / "inference_model")).get_variable_to_dtype_map()
    for name in half_tensors(nextvlad.replace(fp16=True)):
        assert dtypes[f"member0/{name}"] == tf.float16, name
    assert dtypes["member0/tower/video_NeXtVLAD/vlad_bn/moving_mean"] == tf.float32
    assert json.loads((out / "model_flags.json").read_text())["families"] == ["nextvlad", "gated_netvlad"]

    frames, num_frames = _inputs()
    np.savez(tmp_path / "inputs.npz", frames=frames, num_frames=num_frames)
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(out / "inference_model" / "inference_model"),
                             str(tmp_path / "inputs.npz")], capture_output=True, text=True, check=True)
    starter = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    fp32 = sum(0.5 * load_predictor(m.checkpoint)[0](frames, num_frames) for m in members)
    np.testing.assert_allclose(starter, fp32, atol=1e-3)
    np.testing.assert_allclose(load_model(out, "saved_model")(frames, num_frames), starter, atol=1e-5)


def test_a_failed_export_leaves_no_output_and_no_staging_dir(two_members, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(tf.saved_model, "save", broken)
    with pytest.raises(OSError):
        export_ensemble(two_members, [0.5, 0.5], tmp_path / "out" / "export")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_export_replaces_an_old_export_but_refuses_any_other_directory(two_members, tmp_path):
    export_ensemble(two_members, [0.5, 0.5], tmp_path / "export")
    export_ensemble(two_members[:1], [1.0], tmp_path / "export")
    assert len(json.loads((tmp_path / "export" / "ensemble.json").read_text())["members"]) == 1
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing"):
        export_ensemble(two_members, [0.5, 0.5], tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


def test_compress_checkpoint_halves_the_big_tensors_and_reports_the_gap_change(tmp_path, synthetic_dir):
    source = random_checkpoint(tmp_path / "fp32", tiny_config(8, 24), seed=3, step=7)
    report = compress_checkpoint(source, tmp_path / "fp16", str(synthetic_dir / "validate*.tfrecord"),
                                 progress=False)
    compressed = load_checkpoint(tmp_path / "fp16")
    assert compressed.config.fp16 and compressed.step == 7
    assert all(compressed.tensors[name].dtype == np.float16 for name in BIG_TENSORS)
    assert report.compressed_mib < report.fp32_mib and report.to_dict()["fp16_mib"] == report.compressed_mib
    assert report.gap_fp32 is not None and abs(report.gap_change) < 2e-3


def test_sizes_come_from_the_variables_built_and_equal_the_papers_table_1():
    config = ModelConfig.from_name("K16-H256")
    assert round(built_size(config)[0], 2) == 158.65
    assert round(built_size(config.replace(fp16=True))[0], 2) == 80.21
