"""The per-worker training loop that Ray Train runs (`train_loop_per_worker(config: dict)`).

MultiWorkerMirroredStrategy with a custom `tf.function` step (Keras 3's `fit` fails under
it; docs/design.md, stack facts). Every worker runs the same steps, snapshots the weights at the
same steps (reading ON_READ batch-norm statistics is an all-reduce) and reports at the same
steps; rank 0 alone writes checkpoints, evaluates and logs to MLflow.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import keras
import numpy as np

from raytrain8m.data import dequantize
from raytrain8m.data.batches import to_step_inputs
from raytrain8m.data.schema import _QUANT_BIAS, _QUANT_SCALE
from raytrain8m.models import MODELS, cross_entropy
from raytrain8m.records.checkpoint import (
    EMA_PREFIX,
    OPTIMIZER_PREFIX,
    SCORES_KEY,
    check_same_model,
    is_checkpoint,
    list_checkpoints,
    load_checkpoint,
    read_state,
    save_checkpoint,
)
from raytrain8m.runtime import compat
from raytrain8m.runtime.errors import TrainingError
from raytrain8m.runtime.gpus import visible_gpus
from raytrain8m.runtime.lazy import tensorflow as tf
from raytrain8m.train import mixed_precision
from raytrain8m.train.adam import FusedAdam
from raytrain8m.train.config import TrainConfig
from raytrain8m.train.failures import own_error, write_error_record
from raytrain8m.train.prefetch import Prefetcher, batches

log = logging.getLogger("raytrain8m.train")

CRASH_PLAN = ".crash-at-step-{step}"  # fault injection (tests): in the run directory, see planned_crashes
CRASH_MARKER = ".crashed-at-step-{step}"  # … written as the worker dies, so the crash happens once


class StaircaseDecay(keras.optimizers.schedules.LearningRateSchedule):
    """lr · rate^floor(examples / decay_examples), examples = step × global batch (the starter's decay)."""

    def __init__(self, learning_rate: float, rate: float, decay_examples: int, global_batch: int):
        self.learning_rate, self.rate = learning_rate, rate
        self.decay_examples, self.global_batch = decay_examples, global_batch

    def __call__(self, step):
        examples = tf.cast(step, tf.int64) * self.global_batch
        return self.learning_rate * tf.pow(self.rate, tf.cast(examples // self.decay_examples, tf.float32))

    def get_config(self) -> dict:
        return dict(learning_rate=self.learning_rate, rate=self.rate, decay_examples=self.decay_examples,
                    global_batch=self.global_batch)


# Adam fed gradients that the step has already all-reduced (mean) and clipped: Keras 3 sums
# gradients across replicas before applying them and clips before that sum, per replica; the
# paper's code clips the combined gradient. Skipping Keras's sum keeps one all-reduce a step.
PreReducedAdam = compat.without_gradient_sum(FusedAdam)


def make_model_and_optimizer(config: TrainConfig):
    """The run's model (`config.seed`) and its optimizer, built on the trainable weights, in the
    current distribution strategy's scope."""
    model = MODELS[config.model.model](config.model, seed=config.seed)
    optimizer = make_optimizer(config)
    optimizer.build([variable for variable in model.variables.values() if variable.trainable])
    return model, optimizer


def make_optimizer(config: TrainConfig) -> keras.optimizers.Optimizer:
    schedule = StaircaseDecay(config.learning_rate, config.decay_rate, config.decay_examples,
                              config.global_batch_size)
    return PreReducedAdam(learning_rate=schedule, name="adam")  # slots: optimizer/adam/<variable>_…


def dequantize_frames(frames: tf.Tensor) -> tf.Tensor:
    """uint8 frames -> float32, bit-exact with `raytrain8m.data.dequantize` (the starter's
    formula in float32, a multiply then an add). Not for XLA: it fuses them into one FMA,
    which differs in the last bit (checked); a 256-entry table gather is exact there too."""
    return tf.cast(frames, tf.float32) * np.float32(_QUANT_SCALE) + np.float32(_QUANT_BIAS)


def make_ema(model, config: TrainConfig) -> dict[str, tf.Variable]:
    """A moving average of each trainable weight (none when `ema_decay` is 0), starting from the
    weights. ON_READ/MEAN as the batch-norm statistics: each replica averages its own copy of the
    (identical) weights, and reading gives the mean."""
    if not config.ema_decay:
        return {}
    return {name: tf.Variable(tf.convert_to_tensor(variable), name=EMA_PREFIX + name, trainable=False,
                              synchronization=tf.VariableSynchronization.ON_READ,
                              aggregation=tf.VariableAggregation.MEAN)
            for name, variable in model.variables.items() if variable.trainable}


def ema_decay_at(decay: float, step: tf.Tensor) -> tf.Tensor:
    """min(decay, (1 + step) / (10 + step)): early steps move the average faster (as
    tf.train.ExponentialMovingAverage with num_updates), so it forgets the random start."""
    step = tf.cast(step, tf.float32)
    return tf.minimum(tf.constant(decay, tf.float32), (1 + step) / (10 + step))


def make_train_step(model, optimizer, strategy: tf.distribute.Strategy, config: TrainConfig,
                    ema: dict[str, tf.Variable] | None = None, loss_scale=None):
    """A compiled step over fixed shapes (frames padded to max_frames), so it never retraces.

    It takes the quantized batch (`to_step_inputs`: uint8 frames and multi-hot labels, a
    quarter of float32's bytes to copy to the device) and dequantizes inside the graph. With a
    teacher the labels are float32 soft targets (`distill_targets`). With `ema` (see
    `make_ema`), the moving averages follow the weights after each update. With
    `config.mixed_precision` the model's matmuls run in bfloat16 or float16 (`mixed_precision`);
    fp16 scales the loss with `loss_scale` (made here in the strategy's scope when not given)."""
    forward = model.with_compute_dtype(mixed_precision.compute_dtype(config.mixed_precision))
    if loss_scale is None:
        with strategy.scope():
            loss_scale = mixed_precision.loss_scale(config.mixed_precision)
    trainable = [variable for variable in model.variables.values() if variable.trainable]
    spec = (tf.TensorSpec([config.batch_size, config.max_frames, config.model.feature_size], tf.uint8),
            tf.TensorSpec([config.batch_size], tf.int32),
            tf.TensorSpec([config.batch_size, config.model.num_classes],
                          tf.float32 if config.teacher else tf.uint8))

    def loss_and_gradients(frames, num_frames, labels):
        with tf.GradientTape() as tape:
            loss = cross_entropy(forward(frames, num_frames, training=True), labels) \
                + model.regularization_loss(config.moe_l2)
            scaled = loss_scale.scale_loss(loss)
        return loss, loss_scale.unscale(tape.gradient(scaled, trainable))

    if config.jit_compile:  # XLA for the model's forward and backward; the all-reduce stays outside
        loss_and_gradients = tf.function(loss_and_gradients, jit_compile=True)

    def replica_step(frames, num_frames, labels):
        frames, labels = dequantize_frames(frames), tf.cast(labels, tf.float32)
        loss, gradients = loss_and_gradients(frames, num_frames, labels)
        context = tf.distribute.get_replica_context()
        gradients = context.all_reduce(tf.distribute.ReduceOp.MEAN, gradients)
        gradients, _ = tf.clip_by_global_norm(gradients, config.clip_norm)
        loss_scale.apply(optimizer, gradients, trainable)  # fp16: skipped if not all finite
        if ema:
            decay = ema_decay_at(config.ema_decay, optimizer.iterations)
            for name, average in ema.items():
                average.assign(average * decay + model.variables[name] * (1 - decay))
        return loss

    @tf.function(input_signature=spec)
    def train_step(frames, num_frames, labels):
        losses = strategy.run(replica_step, args=(frames, num_frames, labels))
        return strategy.reduce(tf.distribute.ReduceOp.MEAN, losses, axis=None)

    return train_step


def optimizer_tensors(optimizer: keras.optimizers.Optimizer) -> dict[str, tf.Variable]:
    """The optimizer's variables (step counter, Adam moments) under `optimizer/<keras path>`."""
    return {OPTIMIZER_PREFIX + variable.path: variable for variable in optimizer.variables}


def snapshot(model, optimizer, ema: dict[str, tf.Variable] | None = None) -> dict[str, tf.Tensor]:
    """Every variable's value now. All workers call this at the same step: it reduces ON_READ ones.

    Tensors, not numpy: a read shares the variable's buffer, and TensorFlow copies a buffer
    before updating it in place while a read of it is held, so later steps leave the snapshot
    as it was. `.numpy()` copied every weight into new host memory, and the checkpoint's SaveV2
    copied it back: for K16-H256 at 3862 classes (476 MB with Adam's slots) 1.2 s and 5 s at
    a run's first checkpoint, its pages touched for the first time."""
    def read(variable) -> tf.Tensor:
        return (variable.value if isinstance(variable, keras.Variable) else variable).read_value()

    tensors = {name: read(variable) for name, variable in sorted(model.variables.items())}
    tensors.update({EMA_PREFIX + name: read(variable) for name, variable in sorted((ema or {}).items())})
    tensors.update({name: read(variable) for name, variable in optimizer_tensors(optimizer).items()})
    return tensors


def run_label(config: TrainConfig) -> str:
    """The run and its model, as errors name them."""
    run = config.run_name or config.model.name
    return run if run == config.model.name else f"{run} ({config.model.name})"


def diverged(config: TrainConfig, what: str, step: int) -> TrainingError:
    """The error for a run that has blown up, naming the run, its model and the step."""
    return TrainingError(f"{run_label(config)}: non-finite {what} at step {step}; lower the learning rate "
                         f"(now {config.learning_rate:g}); checkpoints before step {step} are kept")


def check_finite(tensors: dict[str, tf.Tensor], config: TrainConfig, step: int) -> None:
    """Refuse to evaluate or checkpoint inf/NaN weights. The loss alone misses them: training
    batch norm uses batch statistics while its moving variance overflows to inf."""
    bad = [name for name, value in tensors.items()
           if tf.as_dtype(value.dtype).is_floating and not bool(tf.reduce_all(tf.math.is_finite(value)))]
    if bad:
        raise diverged(config, f"weights ({', '.join(bad[:3])}{', …' if len(bad) > 3 else ''})", step)


def load_teacher(config: TrainConfig):
    """The teacher's predictions as a function of (frames, num_frames), or None without one.
    Online: the export's SavedModel runs in the worker beside the student, nothing is stored."""
    if not config.teacher:
        return None
    serve = tf.saved_model.load(str(Path(config.teacher) / "saved_model")).signatures["serving_default"]
    return lambda frames, num_frames: serve(frames=tf.constant(frames, tf.float32),
                                            num_frames=tf.constant(num_frames, tf.int32))["predictions"].numpy()


def distill_targets(teacher, config: TrainConfig, frames: np.ndarray, num_frames: np.ndarray,
                    labels: np.ndarray) -> np.ndarray:
    """λ · teacher probabilities + (1 − λ) · labels. The cross-entropy is linear in its target, so
    this equals λ · soft-target cross-entropy + (1 − λ) · label loss with one loss term."""
    if teacher is None:
        return labels
    soft = np.asarray(teacher(frames, num_frames), np.float32)
    return (config.distill_lambda * soft + (1 - config.distill_lambda) * labels).astype(np.float32)


def restore(model, optimizer, config: TrainConfig, directory: str,
            ema: dict[str, tf.Variable] | None = None) -> dict[str, Any]:
    """Load weights, optimizer state and moving averages from a checkpoint of the same model;
    return its state. A checkpoint without averages (`--ema-decay` turned on later) starts
    them from its weights."""
    check_same_model(directory, config.model)
    checkpoint = load_checkpoint(directory)
    targets = {**model.variables, **optimizer_tensors(optimizer)}
    missing = sorted(set(targets) - set(checkpoint.tensors))
    if missing:
        raise TrainingError(f"{directory}: checkpoint lacks {len(missing)} variables, e.g. {missing[:3]}")
    for name, variable in targets.items():
        variable.assign(tf.cast(checkpoint.tensors[name], variable.dtype))
    for name, average in (ema or {}).items():
        average.assign(checkpoint.tensors.get(EMA_PREFIX + name, checkpoint.tensors[name]))
    return checkpoint.state


class SnapshotEvaluator:
    """Rank 0's evaluations of weight snapshots on one non-distributed copy of the model: built
    and traced at the first evaluation, given each later snapshot's weights, so a run's
    evaluations (validate, EMA, holdout) cost their batches and not a new model each time."""

    def __init__(self, config: TrainConfig):
        self.config = config
        self._model = self._predict = None

    def metrics(self, tensors: dict[str, np.ndarray], data, max_batches: int | None = None) -> dict:
        from raytrain8m.records.evaluate import evaluate, load_tensors, model_from_tensors, predictor

        if tf.distribute.has_strategy():
            raise TrainingError("evaluations must run outside the training strategy's scope")
        if self._model is None:
            self._model = model_from_tensors(self.config.model, tensors)
            self._predict = predictor(self._model)
        else:
            load_tensors(self._model, tensors)
        return evaluate(self._predict, data, self.config.model.num_classes, batch_size=256, max_batches=max_batches,
                        progress=False, skip_corrupt=self.config.skip_corrupt)

    def validate(self, tensors: dict[str, np.ndarray]) -> dict[str, float]:
        """Metrics on the run's validate data (`eval_batches` of it), named as the run logs them."""
        metrics = self.metrics(tensors, self.config.validate_data, self.config.eval_batches or None)
        names = {"examples": "eval_videos", "skipped_records": "eval_skipped_records"}
        return {names.get(key, key): float(value) for key, value in metrics.items()
                if isinstance(value, (int, float))}


class HoldoutScorer:
    """Rank 0 scores each checkpoint it writes on the run's `choose` files (split.json), whole,
    as the zoo would: the zoo then reads the score from state.json (`scoring.SCORES_KEY`) instead
    of loading and evaluating the checkpoint again. No split.json: nothing to score on."""

    def __init__(self, config: TrainConfig, evaluator: SnapshotEvaluator):
        from raytrain8m.records.holdout import SPLIT_JSON, data_key, load_split

        self.evaluator = evaluator
        split = load_split(config.run_dir / SPLIT_JSON)
        self.files = list(split.choose) if split is not None else None
        self.key = data_key(self.files) if self.files else None

    def score(self, tensors: dict[str, np.ndarray]) -> dict[str, dict] | None:
        """{data key: metrics} for state.json, or None (no split, or records were skipped)."""
        if self.key is None:
            return None
        metrics = self.evaluator.metrics(tensors, self.files)
        if metrics.get("skipped_records"):  # not what the zoo, which skips nothing, would measure
            return None
        return {self.key: {name: float(value) for name, value in metrics.items()
                           if isinstance(value, (int, float)) and value is not None}}


def first_non_finite(losses: list) -> int | None:
    """Index of the first non-finite loss of a window (read once, at a log step), or None."""
    values = tf.stack(losses).numpy() if losses else np.zeros(0)
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if len(bad) else None


# Rank 0's console lines (the driver prints each as it comes: localray.PROGRESS_LINES).
def _start_line(config: TrainConfig, step: int, workers: int) -> str:
    return (f"{'resuming' if step else 'starting'} {config.model.name} at step {step} of {config.max_steps} "
            f"on {workers} worker(s), global batch {config.global_batch_size}")


def _validate_line(step: int, metrics: dict) -> str:
    return f"step {step}  validate gap {metrics['gap']:.4f}  hit@1 {metrics['hit_at_one']:.4f}  perr {metrics['perr']:.4f}"


def _progress(step: int, config: TrainConfig, loss: float, rate: float, started_step: int,
              started: float) -> str:
    remaining = (config.max_steps - step) / max((step - started_step) / max(time.perf_counter() - started, 1e-9), 1e-9)
    eta = time.strftime("%H:%M:%S", time.gmtime(remaining)) if math.isfinite(remaining) else "?"
    return (f"step {step}/{config.max_steps} ({step / config.max_steps:.0%})  loss {loss:.4f}  "
            f"{rate:,.0f} examples/s  ETA {eta}")


def _show_progress_lines() -> None:
    """Rank 0 prints its own progress lines; Ray's and TF's INFO chatter stays off."""
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def _wait_until_registered(config: TrainConfig, step: int, timeout_s: float = 120) -> None:
    """Testing: Ray Train V2 drops a checkpoint the controller has not polled yet when a worker
    dies; a real crash comes long after the last checkpoint, so wait until it is registered."""
    latest = step // config.checkpoint_every * config.checkpoint_every
    if not latest:
        return
    snapshot_file = config.run_dir / compat.CHECKPOINT_SNAPSHOT
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if snapshot_file.is_file() and f"checkpoint_{latest:08d}" in snapshot_file.read_text():
            return
        time.sleep(0.2)


def planned_crashes(config: TrainConfig, rank: int) -> set[int]:
    """Fault injection, planned from outside the run (tests): an empty file `.crash-at-step-N` in
    the run directory makes worker 1 (worker 0 when alone) kill itself, hard, once, when it
    reaches step N, after Ray Train has registered the checkpoint before it. Read once per
    worker start; a run directory without such files costs nothing."""
    if rank != min(1, config.num_workers - 1):
        return set()
    run_dir = config.run_dir
    planned = {int(path.name.rsplit("-", 1)[1]) for path in run_dir.glob(CRASH_PLAN.format(step="*"))}
    return {step for step in planned if not (run_dir / CRASH_MARKER.format(step=step)).exists()}


def _crash(config: TrainConfig, rank: int, step: int) -> None:
    _wait_until_registered(config, step)
    (config.run_dir / CRASH_MARKER.format(step=step)).touch()
    log.warning("planned crash: killing worker %d at step %d", rank, step)
    os.kill(os.getpid(), signal.SIGKILL)


def checkpoint_state(config: TrainConfig, step: int, examples: int, resumed_from: int, optimizer,
                     metrics: dict, scores: dict | None = None) -> dict:
    """What a checkpoint's `state.json` records besides the tensors (the worker loop and
    `train_locally` write the same)."""
    return {"step": step, "examples": examples, "resumed_from": resumed_from,
            "optimizer_iterations": int(optimizer.iterations.numpy()), "metrics": metrics,
            "train_config": config.to_dict(), **({SCORES_KEY: scores} if scores else {})}


def _report(metrics: dict, rank: int, step: int, config: TrainConfig, tensors: dict | None,
            state: dict, logger) -> None:
    """Every worker reports; rank 0 attaches the checkpoint (when `tensors`) and logs it."""
    import ray.train

    if tensors is None or rank != 0:
        ray.train.report(metrics)
        return
    name = f"checkpoint_{step:08d}"
    target = config.run_dir / name
    if is_checkpoint(target):  # resuming from the newest complete checkpoint never gets here
        raise TrainingError(f"{target} already holds a complete checkpoint; refusing to overwrite it")
    if target.exists():  # a copy cut short (the process died while Ray copied it): not a checkpoint
        log.warning("removing %s: an incomplete checkpoint copy", target)
        shutil.rmtree(target)
    staging = Path(tempfile.mkdtemp(prefix="raytrain8m-"))
    try:
        path = save_checkpoint(staging / name, config.model, tensors, step, state)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(path)),
                         checkpoint_dir_name=name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if logger is not None:
        logger.log_checkpoint(config.run_dir / name, step)


def resume_point(config: TrainConfig) -> str | None:
    """The checkpoint to resume from: the newest complete one in the run directory, whatever Ray
    Train's snapshot says (it can lag the disk by a checkpoint when a process dies); Ray's own
    (None here) only if it is newer, e.g. with storage elsewhere."""
    import ray.train

    run_dir = config.run_dir
    on_disk = list_checkpoints(run_dir) if run_dir.is_dir() else []
    newest = on_disk[-1] if on_disk else None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None and newest is not None:
        with checkpoint.as_directory() as directory:
            if read_state(directory)["step"] > read_state(newest)["step"]:
                return None
    return str(newest) if newest is not None else None


def train_loop_per_worker(config: dict, reading: Iterator[tuple] | None = None) -> None:
    """Ray Train's entry point on each worker: train to `max_steps`, resuming from the newest
    complete checkpoint. Our own errors are recorded in the run directory for the driver.
    `reading`: this worker's `batches`, when `train.worker` has started reading them."""
    config = TrainConfig.from_dict(config)
    try:
        _train(config, reading)
    except Exception as error:
        own = own_error(error)
        if own is not None:
            import ray.train
            write_error_record(config.run_dir, own, ray.train.get_context().get_world_rank())
        raise


def _train(config: TrainConfig, reading: Iterator[tuple] | None = None) -> None:
    import ray.train

    from raytrain8m.records import tracking

    context = ray.train.get_context()
    rank = context.get_world_rank()
    tf.get_logger().setLevel(logging.ERROR)  # else "Collective all_reduce tensors: …" at every new shape
    compat.quiet_ray_train_reports()
    if rank == 0:
        _show_progress_lines()
    devices = visible_gpus(f"{config.run_name} worker {rank}") if config.use_gpu \
        else [device.name for device in tf.config.list_physical_devices("CPU")]
    tf.random.set_seed(config.seed * 1000 + rank)  # per-worker frame sampling; weights use stateless seeds
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model, optimizer = make_model_and_optimizer(config)
        ema = make_ema(model, config)
        loss_scale = mixed_precision.loss_scale(config.mixed_precision)
    state: dict[str, Any] = {}
    newest = resume_point(config)
    checkpoint = ray.train.get_checkpoint()
    if newest is not None:
        state = restore(model, optimizer, config, newest, ema)
    elif checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = restore(model, optimizer, config, directory, ema)
    step = int(state.get("step", 0))
    if int(optimizer.iterations.numpy()) != step:
        raise TrainingError(f"optimizer step {int(optimizer.iterations.numpy())} != checkpoint step {step}")
    resumed_from = step
    logger = tracking.RunLogger.attach(config.mlflow_run_id, config.tracking_uri) \
        if rank == 0 and config.mlflow_run_id else None
    if logger is not None:  # what rank 0 trains on: the MLflow run says whether a GPU was used
        logger.set_tags({"devices": ",".join(name.replace("/physical_device:", "") for name in devices)})
    if rank == 0:
        log.info(_start_line(config, step, strategy.num_replicas_in_sync))

    evaluator = SnapshotEvaluator(config) if rank == 0 else None
    scorer = HoldoutScorer(config, evaluator) if rank == 0 else None
    train_step = make_train_step(model, optimizer, strategy, config, ema, loss_scale)
    # Read ahead in a thread while the step runs: the worker's entry started it (`reading`), or
    # it starts here. One thread and `prefetch_batches` batches, converted to tensors as taken.
    data = reading if reading is not None else Prefetcher(
        batches(ray.train.get_dataset_shard("train"), config, rank), config.prefetch_batches)
    teacher = load_teacher(config)
    global_batch = config.global_batch_size
    started, window_start, window_losses = time.perf_counter(), time.perf_counter(), []
    crashes = planned_crashes(config, rank)
    while step < config.max_steps:
        if step in crashes:
            _crash(config, rank, step)
        frames, num_frames, labels = (tf.convert_to_tensor(array) for array in next(data))
        if teacher is not None:  # soft targets from the teacher on the same (dequantized) frames
            labels = distill_targets(teacher, config, dequantize(np.asarray(frames)), np.asarray(num_frames),
                                     np.asarray(labels, np.float32))
        window_losses.append(train_step(frames, num_frames, labels))  # a tensor: read at log steps
        step += 1
        last = step == config.max_steps
        do_checkpoint = step % config.checkpoint_every == 0 or last
        do_eval = bool(config.eval_every and step % config.eval_every == 0) or last
        if not (do_checkpoint or do_eval or step % config.log_every == 0):
            continue
        bad = first_non_finite(window_losses)
        if bad is not None:
            raise diverged(config, f"loss {float(window_losses[bad])}", step - len(window_losses) + bad + 1)
        loss_scale.check(step, run_label(config))
        elapsed = time.perf_counter() - window_start
        metrics = {"step": step, "examples": step * global_batch,
                   "loss": float(tf.reduce_mean(tf.stack(window_losses))),
                   "examples_per_sec": len(window_losses) * global_batch / max(elapsed, 1e-9),
                   # the window's share the step waited for its batches: input-bound when high
                   "input_wait_fraction": min(1.0, data.take_waited() / max(elapsed, 1e-9)),
                   "learning_rate": float(optimizer.learning_rate.numpy()), **loss_scale.metrics()}
        tensors = snapshot(model, optimizer, ema) if do_checkpoint or do_eval else None
        scores = None
        if tensors is not None:
            check_finite(tensors, config, step)  # every worker holds the same values: all raise
        if rank == 0:
            if last or not config.print_every or step % config.print_every == 0:
                log.info(_progress(step, config, metrics["loss"], metrics["examples_per_sec"], resumed_from,
                                   started))
            if do_eval:
                metrics.update(evaluator.validate(tensors))
                if ema:
                    averaged = {name: tensors.get(EMA_PREFIX + name, value) for name, value in tensors.items()}
                    metrics["ema_gap"] = evaluator.validate(averaged)["gap"]
                log.info(_validate_line(step, metrics))
            scores = scorer.score(tensors) if do_checkpoint else None
            if scores:  # the curve a range of checkpoints to average is picked from
                metrics["holdout_gap"] = next(iter(scores.values()))["gap"]
            if logger is not None:
                logger.log_metrics(metrics, step)
        if do_checkpoint or do_eval:
            # Only here: a Ray Train V2 report waits until the controller polls (every 2 s), so
            # reporting every log step would throttle fast steps to one window per poll.
            state = checkpoint_state(config, step, step * global_batch, resumed_from, optimizer, metrics, scores)
            _report(metrics, rank, step, config, tensors if do_checkpoint else None, state, logger)
        # Let go of the snapshot now: it shares the variables' buffers, and the next step would
        # copy each one it updates while it is held (a model and its Adam slots, on the GPU).
        tensors = averaged = None
        window_start, window_losses = time.perf_counter(), []


def train_locally(config: TrainConfig) -> tuple[Any, list[float]]:
    """The same step without Ray or a multi-worker strategy (one process, `config.batch_size`
    videos a step, the train files read in order): returns the model and each step's loss.

    With `config.out` it also writes the run's checkpoints as a worker does (every
    `checkpoint_every` steps and the last, `<out>/<run_name>/checkpoint_<step:08d>`, optimizer
    slots and `ema/` weights included): tests and benches build averaging and ensemble inputs
    from it."""
    from raytrain8m.data.batches import iter_batches

    if config.num_workers != 1:
        raise TrainingError("train_locally runs one worker; set batch_size to the global batch instead")
    strategy = tf.distribute.get_strategy()
    model, optimizer = make_model_and_optimizer(config)
    ema = make_ema(model, config)
    train_step = make_train_step(model, optimizer, strategy, config, ema)
    teacher = load_teacher(config)
    run_dir = Path(config.out) / (config.run_name or config.model.name) if config.out else None
    losses: list[float] = []
    while len(losses) < config.max_steps:
        produced = 0
        for batch in iter_batches(config.train_data, config.batch_size, num_classes=config.model.num_classes):
            if len(batch["num_frames"]) < config.batch_size or len(losses) == config.max_steps:
                break
            frames, num_frames, labels = to_step_inputs(batch, config.model.num_classes, config.max_frames)
            if teacher is not None:
                labels = distill_targets(teacher, config, dequantize(frames), num_frames,
                                         labels.astype(np.float32))
            losses.append(float(train_step(frames, num_frames, labels)))
            produced += 1
            step = len(losses)
            if run_dir is not None and (step % config.checkpoint_every == 0 or step == config.max_steps):
                state = checkpoint_state(config, step, step * config.batch_size, 0, optimizer, {"loss": losses[-1]})
                save_checkpoint(run_dir / f"checkpoint_{step:08d}", config.model, snapshot(model, optimizer, ema),
                                step, state)
        if not produced:
            raise TrainingError(f"{config.train_data}: fewer than batch_size={config.batch_size} videos")
    return model, losses
