"""Mixed precision (`--mixed-precision off|bf16|fp16`): the matmuls really run in the compute
dtype while variables and outputs stay float32, fp16 trains under its dynamic loss scale, and
the scale halves (skipping the step), grows and gives up as `raytrain8m.train.mixed_precision` says."""
from __future__ import annotations

import numpy as np
import pytest

from raytrain8m.models import ModelConfig
from raytrain8m.runtime.errors import ConfigError, TrainingError
from raytrain8m.train.config import TrainConfig

CLASSES = 20
TINY = {"gated_netvlad": ModelConfig(cluster_size=4, hidden_size=16, num_classes=CLASSES, iterations=10),
        "nextvlad": ModelConfig(family="nextvlad", cluster_size=4, hidden_size=16, groups=2,
                                num_classes=CLASSES),
        "baseline": ModelConfig(family="baseline", num_classes=CLASSES, iterations=10)}


def _inputs(batch: int = 8, frames: int = 10):
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (batch, frames, 1152), dtype=np.uint8),
            rng.integers(1, frames + 1, batch).astype(np.int32),
            (rng.random((batch, CLASSES)) < 0.2).astype(np.uint8))


def test_an_unknown_mode_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"mixed_precision must be one of off, bf16, fp16, got 'fp8'"):
        TrainConfig(mixed_precision="fp8")
    assert TrainConfig().mixed_precision == "off"
    assert TrainConfig(mixed_precision="bf16").params()["mixed_precision"] == "bf16"


@pytest.mark.parametrize("mode,dtype", [("off", "float32"), ("bf16", "bfloat16"), ("fp16", "float16")])
@pytest.mark.parametrize("family", sorted(TINY))
def test_the_matmuls_run_in_the_compute_dtype_and_the_rest_stays_float32(family, mode, dtype):
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.train.mixed_precision import compute_dtype, matmul_dtypes

    config = TINY[family]
    model = MODELS[family](config, seed=0)
    forward = model.with_compute_dtype(compute_dtype(mode))
    traced = tf.function(lambda frames, num_frames: forward(frames, num_frames, training=True)).get_concrete_function(
        tf.TensorSpec([8, 10, 1152], tf.float32), tf.TensorSpec([8], tf.int32))
    assert matmul_dtypes(traced) == [dtype]
    assert {variable.dtype for variable in model.variables.values()} == {tf.float32}
    frames, num_frames, _ = _inputs()
    output = forward(tf.cast(frames, tf.float32) / 255, num_frames)
    assert output.dtype == tf.float32 and output.shape == (8, CLASSES)
    expected = model(tf.cast(frames, tf.float32) / 255, num_frames).numpy()  # float32, the model unchanged
    np.testing.assert_allclose(output.numpy(), expected, atol={"off": 0, "bf16": 0.05, "fp16": 0.01}[mode])


def test_fp16_training_lowers_the_loss_with_its_matmuls_in_half():
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.train.loop import make_optimizer, make_train_step
    from raytrain8m.train.mixed_precision import INITIAL_SCALE, DynamicLossScale, matmul_dtypes

    model_config = TINY["gated_netvlad"]
    config = TrainConfig(model=model_config, batch_size=8, max_frames=10, learning_rate=1e-2, mixed_precision="fp16")
    model = MODELS["gated_netvlad"](model_config, seed=0)
    optimizer = make_optimizer(config)
    optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    loss_scale = DynamicLossScale()
    step = make_train_step(model, optimizer, tf.distribute.get_strategy(), config, loss_scale=loss_scale)
    losses = [float(step(*_inputs())) for _ in range(6)]
    assert matmul_dtypes(step.get_concrete_function()) == ["float16"]  # forward and backward
    assert losses[-1] < losses[0] - 1, losses
    assert int(optimizer.iterations.numpy()) == 6  # skipped steps count too
    assert 1 <= loss_scale.metrics()["loss_scale"] <= INITIAL_SCALE
    assert {variable.dtype for variable in model.variables.values()} == {tf.float32}


def _scaled_step(initial: float, growth_steps: int = 3):
    import tensorflow as tf

    from raytrain8m.train.loop import make_optimizer
    from raytrain8m.train.mixed_precision import DynamicLossScale

    weight = tf.Variable([1.0, 2.0])
    optimizer = make_optimizer(TrainConfig(learning_rate=0.1))
    optimizer.build([weight])
    loss_scale = DynamicLossScale(initial=initial, growth_steps=growth_steps)
    step = tf.function(lambda gradient: loss_scale.apply(optimizer, [gradient], [weight]))
    return weight, optimizer, loss_scale, step


def test_a_non_finite_gradient_halves_the_scale_and_skips_the_step_and_finite_steps_grow_it():
    weight, optimizer, loss_scale, step = _scaled_step(initial=8.0, growth_steps=3)
    step(np.array([np.inf, 1.0], np.float32))
    np.testing.assert_array_equal(weight.numpy(), [1.0, 2.0])  # skipped: the weights as they were
    assert int(optimizer.iterations.numpy()) == 1              # but the step counted
    assert loss_scale.metrics() == {"loss_scale": 4.0}
    step(np.array([np.nan, 1.0], np.float32))
    assert loss_scale.metrics() == {"loss_scale": 2.0} and int(optimizer.iterations.numpy()) == 2
    for finite_steps in (1, 2):
        step(np.array([1.0, -1.0], np.float32))
        assert loss_scale.metrics() == {"loss_scale": 2.0}, finite_steps
    assert not np.array_equal(weight.numpy(), [1.0, 2.0])       # applied
    step(np.array([1.0, -1.0], np.float32))                     # the third finite step in a row
    assert loss_scale.metrics() == {"loss_scale": 4.0} and int(optimizer.iterations.numpy()) == 5
    assert int(loss_scale.finite_steps.numpy()) == 0


def test_a_scale_below_the_floor_is_a_divergence():
    weight, optimizer, loss_scale, step = _scaled_step(initial=2.0 ** -14)
    inf = np.array([np.inf, np.inf], np.float32)
    step(inf)
    loss_scale.check(1, "K4-H16")  # 2**-15: at the floor, not below it
    step(inf)
    with pytest.raises(TrainingError, match=r"K4-H16: the fp16 loss scale fell to 1\.52588e-05 \(below 2\*\*-15"):
        loss_scale.check(2, "K4-H16")
    np.testing.assert_array_equal(weight.numpy(), [1.0, 2.0])
