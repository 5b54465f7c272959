"""The training input and step path: uint8 batches dequantized in the step, prefetching, a
2-worker step equal to a 1-worker step, and the same loss curve for the same seed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from raytrain8m.models import ModelConfig
from raytrain8m.train.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 20  # tests/conftest.py SYNTHETIC
TINY = ModelConfig(cluster_size=4, hidden_size=16, num_classes=CLASSES, iterations=10)


def test_uint8_step_inputs_give_bit_exact_model_inputs_and_predictions(synthetic_dir):
    import tensorflow as tf

    from raytrain8m.data import iter_batches, to_model_inputs
    from raytrain8m.data.batches import to_step_inputs
    from raytrain8m.models import MODELS
    from raytrain8m.train.loop import dequantize_frames

    batch = next(iter_batches(str(synthetic_dir / "train*.tfrecord"), 32, num_classes=CLASSES))
    frames, num_frames, labels = to_model_inputs(batch, CLASSES, max_frames=12)
    quantized, step_num_frames, multi_hot = to_step_inputs(batch, CLASSES, max_frames=12)
    in_graph = tf.function(dequantize_frames)(quantized).numpy()
    valid = np.arange(12)[None, :] < num_frames[:, None]
    np.testing.assert_array_equal(in_graph[valid], frames[valid])  # bit-exact: the starter's formula
    np.testing.assert_array_equal(multi_hot.astype(np.float32), labels)
    model = MODELS["gated_netvlad"](TINY, seed=0)
    np.testing.assert_array_equal(model(in_graph, step_num_frames).numpy(), model(frames, num_frames).numpy())


def test_prefetch_hands_over_batches_in_order_and_reraises_the_readers_error():
    from raytrain8m.train.prefetch import Prefetcher

    def source():
        for i in range(5):
            yield np.full(3, i), np.int32(i)
        raise ValueError("bad record 5")

    seen = []
    with pytest.raises(ValueError, match="bad record 5"):
        for values, index in Prefetcher(source(), depth=2):
            seen.append(int(index))
            assert values.tolist() == [seen[-1]] * 3
    assert seen == [0, 1, 2, 3, 4]
    assert list(Prefetcher(iter([(1,), (2,)]), depth=1)) == [(1,), (2,)]  # a source that ends, ends


def test_prefetch_counts_the_time_its_consumer_waits_for_items():
    """What `input_wait_fraction` (a training window's share spent waiting for batches) is made
    of: a source slower than its consumer makes it wait at least the source's own time, less
    what it already had ready; a consumer slower than its source hardly waits at all."""
    import time

    from raytrain8m.train.prefetch import Prefetcher

    def slow(items: int, seconds: float):
        for index in range(items):
            time.sleep(seconds)
            yield (index,)

    reading = Prefetcher(slow(5, 0.2), depth=1)  # 1 s of reading, asked for at once
    assert [item for (item,) in reading] == [0, 1, 2, 3, 4]
    assert reading.take_waited() >= 0.5  # at most one item (0.2 s) made before the first ask
    assert reading.take_waited() == 0.0  # taken: the next window starts from nothing
    reading = Prefetcher(slow(3, 0.2), depth=3)  # 0.6 s of reading
    time.sleep(1.5)  # all of it done while the consumer was busy
    assert [item for (item,) in reading] == [0, 1, 2]
    assert reading.take_waited() < 0.3


def test_prefetch_reads_ahead_before_anyone_asks_and_close_stops_it():
    """What lets a worker read while it imports TensorFlow: the thread starts at once, fills
    `depth` items and waits; `close()` ends it (and the iteration) without a consumer."""
    import threading
    import time

    from raytrain8m.train.prefetch import Prefetcher

    made = []

    def source():
        for i in range(100):
            made.append(i)
            yield (i,)

    reading = Prefetcher(source(), depth=3)
    deadline = time.monotonic() + 10
    while len(made) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)
    assert made == [0, 1, 2, 3]  # 3 queued, the 4th waiting to be queued: no further
    reading.close()
    assert not any(t.name == "raytrain8m-prefetch" and t.is_alive() for t in threading.enumerate())
    assert list(reading) == []


@pytest.mark.slow  # XLA compiles for about a minute on 2 busy cores
def test_the_xla_step_trains_like_the_plain_one():
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.train.loop import make_optimizer, make_train_step

    rng = np.random.default_rng(0)
    inputs = (rng.integers(0, 256, (8, 10, 1152), dtype=np.uint8), rng.integers(1, 11, 8).astype(np.int32),
              (rng.random((8, CLASSES)) < 0.2).astype(np.uint8))
    losses = []
    for jit_compile in (False, True):
        config = TrainConfig(model=TINY, batch_size=8, max_frames=10, learning_rate=1e-2, jit_compile=jit_compile)
        model = MODELS["gated_netvlad"](TINY, seed=0)
        optimizer = make_optimizer(config)
        optimizer.build([variable for variable in model.variables.values() if variable.trainable])
        step = make_train_step(model, optimizer, tf.distribute.get_strategy(), config)
        losses.append([float(step(*inputs)) for _ in range(3)])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-4)
    assert losses[0][2] < losses[0][0]


def test_the_fused_adam_runs_one_kernel_a_weight_and_updates_as_keras_adam(monkeypatch):
    """make_optimizer's Adam is TF's fused ResourceApplyAdam (Keras 3's element-wise update was a
    third of the step: bench/train_step.py); weights and moments after three steps are what
    Keras's own Adam gives, to float rounding."""
    import keras
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.runtime import compat
    from raytrain8m.train import loop
    from raytrain8m.train.mixed_precision import traced_ops

    rng = np.random.default_rng(0)
    inputs = (rng.integers(0, 256, (8, 10, 1152), dtype=np.uint8), rng.integers(1, 11, 8).astype(np.int32),
              (rng.random((8, CLASSES)) < 0.2).astype(np.uint8))
    config = TrainConfig(model=TINY, batch_size=8, max_frames=10, learning_rate=1e-2)
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(loop, "PreReducedAdam", compat.without_gradient_sum(keras.optimizers.Adam))
        model = MODELS["gated_netvlad"](TINY, seed=0)
        optimizer = loop.make_optimizer(config)
        trainable = [variable for variable in model.variables.values() if variable.trainable]
        optimizer.build(trainable)
        step = loop.make_train_step(model, optimizer, tf.distribute.get_strategy(), config)
        for _ in range(3):
            step(*inputs)
        kernels = sum(node.op == "ResourceApplyAdam" for node in traced_ops(step.get_concrete_function()))
        results.append((loop.snapshot(model, optimizer), kernels))
    (fused, fused_kernels), (reference, reference_kernels) = results
    assert (fused_kernels, reference_kernels) == (len(trainable), 0)
    assert sorted(fused) == sorted(reference) and any("velocity" in name for name in fused)
    for name, value in reference.items():
        np.testing.assert_allclose(fused[name], value, rtol=1e-4, atol=1e-5, err_msg=name)


def test_a_snapshot_keeps_its_steps_values_while_training_goes_on():
    """Snapshots are reads that share the variables' buffers (no copy to numpy): what they hold
    must stay as it was while later steps update the weights, the EMA and Adam's slots in
    place, or a checkpoint written after an evaluation would hold other values than it scored."""
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.train import loop

    rng = np.random.default_rng(1)
    inputs = (rng.integers(0, 256, (8, 10, 1152), dtype=np.uint8), rng.integers(1, 11, 8).astype(np.int32),
              (rng.random((8, CLASSES)) < 0.2).astype(np.uint8))
    config = TrainConfig(model=TINY, batch_size=8, max_frames=10, learning_rate=1e-2, ema_decay=0.9)
    model = MODELS["gated_netvlad"](TINY, seed=0)
    optimizer = loop.make_optimizer(config)
    optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    ema = loop.make_ema(model, config)
    step = loop.make_train_step(model, optimizer, tf.distribute.get_strategy(), config, ema)
    step(*inputs)
    taken = loop.snapshot(model, optimizer, ema)
    held = {name: np.array(value, copy=True) for name, value in taken.items()}
    step(*inputs)
    step(*inputs)
    later = loop.snapshot(model, optimizer, ema)
    moved = [name for name in held if not np.array_equal(np.asarray(later[name]), held[name])]
    assert any(name.startswith(loop.EMA_PREFIX) for name in moved)
    assert any("velocity" in name for name in moved) and any(name in model.variables for name in moved)
    for name, value in held.items():
        np.testing.assert_array_equal(np.asarray(taken[name]), value, err_msg=name)


# --- slow: processes of their own ------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_workers_update_the_weights_as_one_worker_at_the_same_global_batch(tmp_path):
    """Guards PreReducedAdam's reliance on Keras's private `_all_reduce_sum_gradients`: a doubled
    all-reduce (or one rank's gradient alone) changes the Adam moments. The baseline model has no
    batch norm, so two half batches give the same mean gradient as the whole batch."""
    script = ROOT / "tests" / "_one_step.py"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": str(ROOT)}
    env.pop("TF_CONFIG", None)
    single = subprocess.run([sys.executable, str(script), str(tmp_path / "one.npz"), "1", "0"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    workers = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"two-{rank}.npz"), "2", str(rank)],
                                env={**env, "TF_CONFIG": json.dumps({"cluster": cluster,
                                                                     "task": {"type": "worker", "index": rank}})},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(2)]
    for worker in workers:
        _, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-3000:]
    one = np.load(tmp_path / "one.npz")
    for rank in range(2):
        two = np.load(tmp_path / f"two-{rank}.npz")
        assert sorted(two.files) == sorted(one.files)
        moments = [name for name in one.files if "momentum" in name or "velocity" in name]
        assert moments and any(np.abs(one[name]).max() > 0 for name in moments)
        for name in one.files:
            # Moments scale with the gradient (a doubled sum shows there); gradients near 0 are
            # float noise (sums that cancel), and Adam's first update about lr·sign(g).
            scale = float(np.abs(one[name]).max()) if one[name].size else 0.0
            tolerance = dict(rtol=1e-4, atol=1e-4 * scale) if name in moments else dict(rtol=0, atol=1e-5)
            np.testing.assert_allclose(two[name], one[name], err_msg=name, **tolerance)


@pytest.mark.slow
def test_the_same_seed_gives_the_same_loss_curve(synthetic_dir, tmp_path, ray_session):
    from raytrain8m.train.driver import fit

    def curve(run_name: str, seed: int) -> list[float]:
        config = TrainConfig(model=TINY, train_data=str(synthetic_dir / "train*.tfrecord"),
                             validate_data=str(synthetic_dir / "validate*.tfrecord"), batch_size=8,
                             learning_rate=1e-2, max_steps=24, checkpoint_every=24, eval_every=0,
                             log_every=2, shuffle_buffer=16, max_frames=12, seed=seed, out=str(tmp_path),
                             run_name=run_name, experiment="test-trainloop",
                             tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        result = fit(config, resources_per_worker={"CPU": 0.5})
        return _history(result.mlflow_run_id, config.tracking_uri)

    first, again = curve("seed1", 1), curve("seed1-again", 1)
    assert len(first) == 12 and first == again  # 24 steps (>2 epochs of 84 videos), read every 2


def _history(run_id: str, uri: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    return [m.value for m in sorted(MlflowClient(uri).get_metric_history(run_id, "loss"), key=lambda m: m.step)]
