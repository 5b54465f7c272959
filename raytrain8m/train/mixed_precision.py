"""Mixed precision for training (`TrainConfig.mixed_precision`: off, bf16 or fp16).

A training-time setting only: the variables stay float32 (checkpoints, averaging, exports are
as they were); the model's matrix products run in the compute dtype, their operands cast right
at the product and the product cast back (`models.layers.Forward._matmul`), so batch norm,
softmax, the output and the loss stay float32.

fp16 needs loss scaling, bf16 (float32's exponent range) does not: the loss is multiplied by a
dynamic scale before the gradients are taken and the gradients divided by it right after, before
the all-reduce and the clipping. A step whose all-reduced gradients are not all finite is skipped
(only `optimizer.iterations` advances, so step numbers stay those of the checkpoints) and halves
the scale; `GROWTH_STEPS` finite steps in a row double it. The scale is not checkpointed: a
resumed run starts again at `INITIAL_SCALE` (a few skipped steps find its level again).
One code path on CPU and GPU: the apply-or-skip decision is made in a cross-replica context
(a `merge_call`), as Keras's LossScaleOptimizer does where merge calls are in use.
"""
from __future__ import annotations

from typing import Sequence

from raytrain8m.runtime.errors import TrainingError
from raytrain8m.runtime.lazy import tensorflow as tf

INITIAL_SCALE = 2.0 ** 15
GROWTH_STEPS = 2000   # finite steps in a row before the scale doubles
MIN_SCALE = 2.0 ** -15  # below it the gradients are non-finite at any scale: the run diverged
MATMUL_OPS = ("MatMul", "BatchMatMul", "BatchMatMulV2", "BatchMatMulV3")


def compute_dtype(mode: str) -> tf.DType:
    """The dtype of the model's matrix products under `mode`."""
    return {"off": tf.float32, "bf16": tf.bfloat16, "fp16": tf.float16}[mode]


def loss_scale(mode: str) -> "NoLossScale | DynamicLossScale":
    """fp16: a dynamic loss scale (create it in the strategy's scope); off, bf16: none."""
    return DynamicLossScale() if mode == "fp16" else NoLossScale()


class NoLossScale:
    """The loss and gradients as they are, every step applied (off and bf16)."""

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        return loss

    def unscale(self, gradients: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return list(gradients)

    def apply(self, optimizer, gradients: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        optimizer.apply_gradients(zip(gradients, variables))

    def metrics(self) -> dict[str, float]:
        return {}

    def check(self, step: int, run: str) -> None:
        pass


class DynamicLossScale(NoLossScale):
    """fp16's loss scale: halved on non-finite gradients (the step skipped), doubled after
    `growth_steps` finite steps, a divergence below `floor`."""

    def __init__(self, initial: float = INITIAL_SCALE, growth_steps: int = GROWTH_STEPS,
                 floor: float = MIN_SCALE):
        self.growth_steps, self.floor = growth_steps, floor
        self.scale = tf.Variable(initial, dtype=tf.float32, trainable=False, name="loss_scale")
        self.finite_steps = tf.Variable(0, dtype=tf.int64, trainable=False, name="loss_scale_finite_steps")

    def scale_loss(self, loss: tf.Tensor) -> tf.Tensor:
        return loss * self.scale

    def unscale(self, gradients: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        return [None if gradient is None else gradient / self.scale for gradient in gradients]

    def apply(self, optimizer, gradients: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> None:
        """In a replica context, all-reduced gradients (the same on every replica, so every
        replica decides the same): applied if all are finite, else skipped."""
        finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(gradient))
                                for gradient in gradients if gradient is not None])

        def apply_or_skip(strategy, finite, gradients):
            # A cond whose branch calls merge_call (Keras's apply does) cannot be in a replica context.
            finite = strategy.experimental_local_results(finite)[0]

            def update():
                strategy.extended.call_for_each_replica(
                    lambda gradients: optimizer.apply_gradients(zip(gradients, variables)), args=(gradients,))

            def skip():  # the step still counts: step numbers stay those of the checkpoints
                optimizer.iterations.assign_add(1)

            tf.cond(finite, update, skip)
            grow = tf.logical_and(finite, self.finite_steps + 1 >= self.growth_steps)
            self.finite_steps.assign(tf.where(tf.logical_and(finite, tf.logical_not(grow)),
                                              self.finite_steps + 1, tf.constant(0, tf.int64)))
            self.scale.assign(tf.where(finite, tf.where(grow, self.scale * 2, self.scale), self.scale / 2))

        tf.distribute.get_replica_context().merge_call(apply_or_skip, args=(finite, list(gradients)))

    def metrics(self) -> dict[str, float]:
        return {"loss_scale": float(self.scale.numpy())}

    def check(self, step: int, run: str) -> None:
        """Raise once the scale has fallen below the floor: no scale gives finite gradients."""
        scale = float(self.scale.numpy())
        if scale < self.floor:
            raise TrainingError(
                f"{run}: the fp16 loss scale fell to {scale:g} (below 2**-15 = {self.floor:g}) by step "
                f"{step}: the gradients are non-finite at every scale, training diverged; lower the learning "
                "rate or train with --mixed-precision bf16 or off")


def traced_ops(function) -> list:
    """The ops (NodeDefs) of a traced `tf.function` (a ConcreteFunction), those of its nested
    functions (an XLA-compiled part, a strategy's replica function) included."""
    graph = function.graph.as_graph_def()
    return [*graph.node, *(node for nested in graph.library.function for node in nested.node_def)]


def matmul_dtypes(function) -> list[str]:
    """The dtypes the matrix products of a traced `tf.function` (a ConcreteFunction) run in
    (`traced_ops`): what really ran, not what was asked for."""
    return sorted({tf.as_dtype(node.attr[key].type).name for node in traced_ops(function) if node.op in MATMUL_OPS
                   for key in ("T", "Ta", "Tb") if key in node.attr})
