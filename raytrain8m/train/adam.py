"""Keras 3's Adam with each variable's update as TensorFlow's one fused kernel.

Keras 3 writes Adam's update as about a dozen element-wise ops a variable (subtract, multiply,
assign_add for each moment, square, sqrt, add, divide, …), each a full pass over memory the
size of the weights. For the paper's models (29 M weights at K16-H256, 90 M at K32-H1024) that
made the optimizer about a third of a training step on this CPU (bench/train_step.py: the same
step with plain SGD ran 40% faster). `ResourceApplyAdam`, the kernel TF1's AdamOptimizer and
the YouTube-8M starter used, reads the gradient and the three tensors once and writes them
once, on CPUs and GPUs. The arithmetic is Keras's own: the same moments, the same bias
correction folded into the step size, epsilon added to sqrt(v) (tests/test_trainloop.py
compares the two).
"""
from __future__ import annotations

import keras

from raytrain8m.runtime.lazy import tensorflow as tf


class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` (same arguments, slots and checkpoints) with a fused dense update;
    AMSGrad and sparse gradients take Keras's own path."""

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices):
            return super().update_step(gradient, variable, learning_rate)
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta1, beta2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable), m=_handle(self._momentums[index]), v=_handle(self._velocities[index]),
            beta1_power=tf.pow(beta1, step), beta2_power=tf.pow(beta2, step), lr=tf.cast(learning_rate, dtype),
            beta1=beta1, beta2=beta2, epsilon=tf.cast(self.epsilon, dtype), grad=tf.cast(gradient, dtype))


def _handle(variable):
    """The resource handle of a Keras or TF variable; under a tf.distribute strategy's update,
    the handle of this replica's copy."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle
