"""Helpers shared by the average/ensemble/export/infer tests: tiny checkpoints, trained members, a zoo."""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import tensorflow as tf

from raytrain8m.models import ModelConfig, create_variables, size_mib
from raytrain8m.records.checkpoint import save_checkpoint

NUM_CLASSES = 20
ITERATIONS = 10


def tiny_config(cluster_size: int = 4, hidden_size: int = 16, family: str = "gated_netvlad") -> ModelConfig:
    return ModelConfig(cluster_size=cluster_size, hidden_size=hidden_size, num_classes=NUM_CLASSES,
                       iterations=ITERATIONS, family=family)


def random_checkpoint(directory: Path, config: ModelConfig, seed: int, step: int,
                      extra: dict | None = None) -> Path:
    """A checkpoint of freshly initialised variables (different seeds give different weights)."""
    tensors = {name: variable.numpy() for name, variable in create_variables(config, seed=seed).items()}
    tensors.update(extra or {})
    return save_checkpoint(directory, config, tensors, step=step)


def constant_checkpoint(directory: Path, config: ModelConfig, step: int) -> Path:
    """A checkpoint of all-zero variables: it predicts the same probability for every class of every
    video, so adding it to an ensemble (any weight) is a monotone map of the others' scores and
    cannot change their GAP."""
    tensors = {name: variable.numpy() for name, variable in create_variables(config, zeros=True).items()}
    return save_checkpoint(directory, config, tensors, step=step)


@contextlib.contextmanager
def deterministic(seed: int):
    """Seeded Python/numpy/TF random state and deterministic TF ops, restored afterwards (other
    tests of the session keep the default). Frame sampling in training is a stateful random op."""
    from tensorflow.python.framework import config as tf_config  # the public API can only enable it

    was_enabled = tf_config.is_op_determinism_enabled()
    tf.keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was_enabled:
            tf_config.disable_op_determinism()


def load_split(data_dir: Path, split: str):
    from raytrain8m.data.batches import iter_batches, to_model_inputs

    frames, num_frames, labels = [], [], []
    for batch in iter_batches(str(data_dir / f"{split}*.tfrecord"), 64, num_classes=NUM_CLASSES):
        f, n, y = to_model_inputs(batch, NUM_CLASSES)
        frames.append(f), num_frames.append(n), labels.append(y)
    width = max(f.shape[1] for f in frames)
    frames = [np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))) for f in frames]
    return np.concatenate(frames), np.concatenate(num_frames), np.concatenate(labels)


def train_member(data_dir: Path, directory: Path, config: ModelConfig, seed: int, steps: int = 300,
                 batch_size: int = 28, learning_rate: float = 3e-3) -> Path:
    """A member that learned something: `steps` steps of training's own step and optimizer
    (`train.loop.train_locally`, one process) on the synthetic train split, its last checkpoint
    written as a worker writes it (optimizer slots included) under `directory`. The same weights
    on every run (seeded, deterministic ops). Batches of 28 cover conftest's 84 train videos
    whole (the step takes full batches only)."""
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import train_locally

    train = TrainConfig(model=config, train_data=str(data_dir / "train*.tfrecord"), batch_size=batch_size,
                        learning_rate=learning_rate, max_steps=steps, checkpoint_every=steps, seed=seed,
                        max_frames=12, out=str(directory.parent), run_name=directory.name)
    with deterministic(seed):
        train_locally(train)
    return directory / f"checkpoint_{steps:08d}"


def trained_members(data_dir: Path, root: Path, steps: int = 300) -> list[Path]:
    """Two differently shaped trained members, made once per session under `root`: their checkpoints."""
    specs = [(tiny_config(4, 16), 1), (tiny_config(8, 24), 2)]
    paths = [root / f"member-{config.name}" / f"checkpoint_{steps:08d}" for config, _ in specs]
    for path, (config, seed) in zip(paths, specs):
        if not (path / "state.json").is_file():
            train_member(data_dir, path.parent, config, seed, steps)
    return paths


def write_zoo(path: Path, checkpoints: list[Path], letters: str, gaps: list[float] | None = None,
              fp16_mib: list[float] | None = None) -> Path:
    """A zoo.json in the sweep's format for the given checkpoints."""
    from raytrain8m.records.checkpoint import read_config

    models = []
    for index, (checkpoint, letter) in enumerate(zip(checkpoints, letters)):
        config = read_config(checkpoint)
        models.append({
            "letter": letter, "name": config.name, "cluster_size": config.cluster_size,
            "hidden_size": config.hidden_size, "num_classes": config.num_classes,
            "fp32_mib": size_mib(config), "fp16_mib": fp16_mib[index] if fp16_mib else size_mib(config, True),
            "best_single_gap": gaps[index] if gaps else 0.5, "best_single_checkpoint": str(checkpoint),
            "averaged_gap": None, "averaged_checkpoint": None, "checkpoints": [str(checkpoint)],
            "run_dir": str(checkpoint.parent)})
    path.write_text(json.dumps({"models": models, "eliminated": []}, indent=2))
    return path



# The official starter's inference.py, reduced to what it does with a MetaGraph: import it the
# TF1 way in a fresh process, feed frames padded to 300, read the `predictions` collection.
FRESH_PROCESS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import tensorflow as tf
    meta, frames_path = sys.argv[1], sys.argv[2]
    data = np.load(frames_path)
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:  # as google/youtube-8m's inference.py
        saver = tf.compat.v1.train.import_meta_graph(meta + ".meta", clear_devices=True)
        saver.restore(sess, meta)
        input_tensor = tf.compat.v1.get_collection("input_batch_raw")[0]
        num_frames_tensor = tf.compat.v1.get_collection("num_frames")[0]
        predictions_tensor = tf.compat.v1.get_collection("predictions")[0]
        sess.run(tf.compat.v1.local_variables_initializer())
        padded = np.zeros((len(data["frames"]), 300, 1152), np.float32)  # the starter pads to 300 frames
        padded[:, :data["frames"].shape[1]] = data["frames"]
        predictions = sess.run(predictions_tensor, {input_tensor: padded, num_frames_tensor: data["num_frames"]})
    print(json.dumps(predictions.tolist()))
""")


def assert_the_starters_way_matches_the_csv(export_dir: Path, test_glob: str, work: Path) -> None:
    """`jobs/infer.py`'s CSV for `export_dir` holds, for every test video, the top 20 classes of
    what the starter's TF1 loading of the same MetaGraph predicts, in order, with its scores."""
    from raytrain8m.commands import infer as infer_command
    from raytrain8m.data.batches import iter_batches, to_model_inputs

    csv = work / "submission.csv"
    assert infer_command.main(["--model", str(export_dir), "--data", test_glob, "--out", str(csv)]) == 0
    ids, frames, num_frames = [], [], []
    for batch in iter_batches(test_glob, 1000):
        f, n, _ = to_model_inputs(batch, NUM_CLASSES)
        ids.extend(batch["id"]), frames.append(f), num_frames.append(n)
    width = max(f.shape[1] for f in frames)
    frames = np.concatenate([np.pad(f, ((0, 0), (0, width - f.shape[1]), (0, 0))) for f in frames])
    np.savez(work / "inputs.npz", frames=frames, num_frames=np.concatenate(num_frames))
    result = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(export_dir / "inference_model" / "inference_model"),
                             str(work / "inputs.npz")], capture_output=True, text=True, check=True)
    predictions = np.array(json.loads(result.stdout.strip().splitlines()[-1]))
    lines = csv.read_text().splitlines()
    assert lines[0] == "VideoId,LabelConfidencePairs" and len(lines) == len(ids) + 1
    rows = {line.split(",")[0]: line.split(",")[1].split() for line in lines[1:]}
    for video_id, scores in zip(ids, predictions):
        pairs = rows[video_id]
        labels, confidences = [int(x) for x in pairs[::2]], [float(x) for x in pairs[1::2]]
        assert len(labels) == 20 and confidences == sorted(confidences, reverse=True)
        assert sorted(labels) == sorted(np.argsort(-scores, kind="stable")[:20].tolist())
        np.testing.assert_allclose(confidences, scores[labels], atol=2e-6)
