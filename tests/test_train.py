"""Training on Ray Train: loss falls, beats the baseline, survives a killed worker, logs to
MLflow; the command's flags fail plainly. One shared 2-worker run (conftest's `trained`, slow);
a killed driver's resume is in tests/test_sweep.py (a trial's driver is `fit`)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from raytrain8m.commands import distill as distill_command
from raytrain8m.commands import train as train_command
from raytrain8m.models import ModelConfig
from raytrain8m.records import tracking
from raytrain8m.records.checkpoint import list_checkpoints, load_checkpoint, read_state
from raytrain8m.runtime.errors import CheckpointError, ConfigError
from raytrain8m.train.config import TrainConfig

from _trained_run import CPU_HALF, CRASH_AT, EVERY, STEPS, TINY
from _trained_run import train_config as _config

ROOT = Path(__file__).resolve().parents[1]


# --- fast: the config and the command's parsing ---------------------------------------------

def test_train_config_round_trips_and_refuses_unknown_keys():
    config = TrainConfig(model=TINY, batch_size=8)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown train config keys: epochs"):
        TrainConfig.from_dict({**config.to_dict(), "epochs": 3})
    with pytest.raises(ConfigError, match="unknown model config keys: colour"):
        TrainConfig.from_dict({**config.to_dict(), "model": {**TINY.to_dict(), "colour": 1}})
    with pytest.raises(ConfigError, match="batch_size"):
        TrainConfig(batch_size=0)


def test_defaults_are_the_papers():
    config = TrainConfig()
    assert (config.learning_rate, config.decay_rate, config.decay_examples) == (1e-4, 0.8, 4_000_000)
    assert (config.batch_size, config.clip_norm, config.moe_l2, config.checkpoint_every) == (80, 1.0, 1e-6, 5000)


def test_learning_rate_decays_by_examples_in_stairs():
    from raytrain8m.train.loop import StaircaseDecay

    schedule = StaircaseDecay(1e-4, 0.8, 4_000_000, global_batch=160)
    assert float(schedule(24_999)) == pytest.approx(1e-4)          # 3,999,840 examples
    assert float(schedule(25_000)) == pytest.approx(0.8e-4)        # 4,000,000 examples
    assert float(schedule(100_000)) == pytest.approx(1e-4 * 0.8 ** 4)


def test_train_flags_take_a_nextvlad_name():
    job = train_command
    config = job.config_from_args(job.parse_args(["--model", "NX-K112-H2048-R16", "--classes", "20",
                                                  "--dropout", "0.25"]))
    assert config.model == ModelConfig.from_name("NX-K112-H2048-R16", num_classes=20, dropout=0.25)
    assert config.model.family == "nextvlad" and config.model.gating_reduction == 16


def test_train_flags_derive_from_the_configs():
    job = train_command
    config = job.config_from_args(job.parse_args(
        ["--model", "K32-H1024", "--classes", "20", "--lr", "0.01", "--workers", "2", "--use-gpu",
         "--max-steps", "7", "--out", "/tmp/x"]))
    assert (config.model.cluster_size, config.model.hidden_size, config.model.num_classes) == (32, 1024, 20)
    assert (config.learning_rate, config.num_workers, config.use_gpu, config.max_steps) == (0.01, 2, True, 7)
    assert config.batch_size == TrainConfig.batch_size and config.checkpoint_every == 5000
    with pytest.raises(SystemExit):
        job.parse_args(["--no-such-flag"])


def test_the_weights_moving_average_follows_each_update_with_a_warm_up_decay():
    import numpy as np
    import tensorflow as tf

    from raytrain8m.models import MODELS
    from raytrain8m.train.loop import make_ema, make_optimizer, make_train_step, snapshot

    config = TrainConfig(model=TINY, batch_size=4, max_frames=6, learning_rate=1e-2, ema_decay=0.5)
    assert make_ema(MODELS["gated_netvlad"](TINY), config.replace(ema_decay=0.0)) == {}
    model = MODELS["gated_netvlad"](TINY, seed=3)
    optimizer = make_optimizer(config)
    trainable = [variable for variable in model.variables.values() if variable.trainable]
    optimizer.build(trainable)
    ema = make_ema(model, config)
    assert set(ema) == {name for name, variable in model.variables.items() if variable.trainable}
    step = make_train_step(model, optimizer, tf.distribute.get_strategy(), config, ema)
    rng = np.random.default_rng(0)
    expected = {name: variable.numpy() for name, variable in ema.items()}
    for index in range(1, 4):
        step(rng.uniform(-2, 2, (4, 6, 1152)).astype(np.float32), np.full(4, 6, np.int32),
             (rng.random((4, 20)) < 0.2).astype(np.float32))
        decay = min(0.5, (1 + index) / (10 + index))  # 0.18, 0.25, 0.31: the warm-up decides here
        for name in expected:
            expected[name] = decay * expected[name] + (1 - decay) * model.variables[name].numpy()
    for name, value in expected.items():
        np.testing.assert_allclose(ema[name].numpy(), value, rtol=1e-5, atol=1e-6)
    tensors = snapshot(model, optimizer, ema)
    assert all(f"ema/{name}" in tensors for name in ema)
    with pytest.raises(ConfigError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


# --- slow: the shared 2-worker run (conftest's `trained`, tests/_trained_run.py) -------------

@pytest.mark.slow
def test_worker_killed_mid_run_resumes_from_checkpoint_to_max_steps(trained):
    assert (trained.run_dir / f".crashed-at-step-{CRASH_AT}").exists()  # the kill did happen
    steps = [read_state(path)["step"] for path in trained.checkpoints]
    assert steps == list(range(EVERY, STEPS + 1, EVERY))
    for path, step in zip(trained.checkpoints, steps):
        state = read_state(path)
        assert state["optimizer_iterations"] == step and state["examples"] == step * 16  # none lost or repeated
        assert path == trained.run_dir / f"checkpoint_{step:08d}"
    final = read_state(trained.checkpoints[-1])
    assert final["resumed_from"] == EVERY * (CRASH_AT // EVERY)  # restarted from the checkpoint before the kill
    checkpoint = load_checkpoint(trained.checkpoints[-1])
    assert checkpoint.config == TINY
    assert any(name.startswith("optimizer/") for name in checkpoint.tensors)
    assert int(checkpoint.tensors["optimizer/adam/iteration"]) == STEPS


@pytest.mark.slow
def test_every_checkpoint_keeps_the_weights_moving_average_beside_the_weights(trained):
    import numpy as np

    for path in trained.checkpoints:
        checkpoint = load_checkpoint(path)
        averaged = checkpoint.ema_weights
        assert averaged is not None and set(averaged) == set(checkpoint.weights)
        assert not any(name.startswith("ema/") for name in checkpoint.weights)
        assert np.isfinite(averaged["tower/hidden1_weights"]).all()
        assert not np.allclose(averaged["tower/hidden1_weights"], checkpoint.weights["tower/hidden1_weights"])
        np.testing.assert_array_equal(averaged["tower/gating_bn/moving_mean"],  # statistics as trained
                                      checkpoint.weights["tower/gating_bn/moving_mean"])
    assert 0 < trained.metrics["ema_gap"] <= 1


@pytest.mark.slow
def test_each_checkpoint_carries_its_holdout_score_and_the_zoo_reads_it_unless_the_files_changed(
        trained, tmp_path):
    """Rank 0 scored every checkpoint on the split's `choose` files as it wrote it; the zoo takes
    those scores for the same files (wherever they lie) and evaluates again once a file changed,
    getting the same GAPs."""
    import shutil

    from raytrain8m.records.checkpoint import recorded_score
    from raytrain8m.records.holdout import SPLIT_JSON, data_key, load_split
    from raytrain8m.select.scoring import Evaluation, evaluate_one
    from raytrain8m.select.zoo import build_zoo

    split = load_split(trained.run_dir / SPLIT_JSON)
    recorded = [recorded_score(path, data_key(split.choose)) for path in trained.checkpoints]
    assert all(score is not None for score in recorded)  # after the killed worker's restart too
    fresh = evaluate_one(Evaluation(TINY.name, (str(trained.checkpoints[-1]),), split.choose))
    assert recorded[-1]["gap"] == pytest.approx(fresh["gap"], abs=1e-6) and recorded[-1]["examples"] > 0
    history = tracking.client(trained.config.tracking_uri).get_metric_history(trained.mlflow_run_id, "holdout_gap")
    assert sorted(point.step for point in history) == list(range(EVERY, STEPS + 1, EVERY))

    copies = []
    for path in split.choose:  # the same content elsewhere, modification time kept: the same key
        copies.append(tmp_path / "held" / Path(path).name)
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy2(path, copies[-1])
    read = build_zoo([trained.run_dir], [str(p) for p in copies], tmp_path / "read", parallel=False)
    assert read.timing["from_training"] == len(trained.checkpoints)
    assert read.models[0].best_single_gap == max(score["gap"] for score in recorded)
    for copy in copies:  # rewritten (a newer modification time): every checkpoint evaluated again
        os.utime(copy, ns=(copy.stat().st_atime_ns, copy.stat().st_mtime_ns + 10**9))
    again = build_zoo([trained.run_dir], [str(p) for p in copies], tmp_path / "again", parallel=False)
    assert again.timing["from_training"] == 0
    assert again.timing["evaluations"] == read.timing["evaluations"] + len(trained.checkpoints)
    assert again.models[0].best_single_gap == pytest.approx(read.models[0].best_single_gap, abs=1e-6)


@pytest.fixture(scope="module")
def baseline_gap(netvlad_data, tmp_path_factory) -> float:
    """The mean-pooled baseline's validate GAP after the same steps, global batch (16), learning
    rate and step function as the 2-worker run, trained in one process."""
    from raytrain8m.records.evaluate import evaluate, predictor
    from raytrain8m.train.loop import train_locally

    config = _config(netvlad_data, tmp_path_factory.mktemp("baseline"), model=TINY.replace(family="baseline"),
                     num_workers=1, batch_size=16)
    baseline, _ = train_locally(config)
    return evaluate(predictor(baseline), config.validate_data, 20, progress=False)["gap"]


@pytest.mark.slow
def test_loss_falls_and_gap_beats_the_mean_pooled_baseline(trained, baseline_gap):
    history = tracking.client(trained.config.tracking_uri).get_metric_history(trained.mlflow_run_id, "loss")
    losses = [metric.value for metric in sorted(history, key=lambda metric: metric.step)]
    assert losses[-1] < 0.8 * losses[0], losses
    gap = trained.metrics["gap"]
    assert gap > baseline_gap + 0.1, (gap, baseline_gap)


@pytest.mark.slow
def test_nextvlad_trains_on_ray_train_and_beats_the_mean_pooled_baseline(netvlad_data, tmp_path, ray_session,
                                                                         baseline_gap):
    """The second family through the real training path (one worker: the same global batch)."""
    from raytrain8m.records.evaluate import evaluate_checkpoint
    from raytrain8m.train.driver import fit

    nextvlad = ModelConfig.from_name("NX-K4-H16", num_classes=20, iterations=10)
    config = _config(netvlad_data, tmp_path, model=nextvlad, run_name=nextvlad.name, num_workers=1,
                     batch_size=16, eval_every=0, checkpoint_every=STEPS)
    result = fit(config, resources_per_worker=CPU_HALF)
    assert result.metrics["gap"] > baseline_gap + 0.1, (result.metrics["gap"], baseline_gap)
    [checkpoint] = result.checkpoints
    assert load_checkpoint(checkpoint).config == nextvlad  # model.json says the family
    run = tracking.client(config.tracking_uri).get_run(result.mlflow_run_id)
    assert run.data.params["model"] == "NX-K4-H16" and run.data.params["model_type"] == "nextvlad"
    rebuilt = evaluate_checkpoint(checkpoint, config.validate_data, progress=False)  # from model.json alone
    assert rebuilt["gap"] > baseline_gap + 0.1


@pytest.mark.slow
def test_mlflow_holds_params_metrics_sizes_and_checkpoint_locations(trained):
    run = tracking.client(trained.config.tracking_uri).get_run(trained.mlflow_run_id)
    assert run.info.run_name == "tiny" and run.info.status == "FINISHED"
    assert run.data.params["cluster_size"] == "4" and run.data.params["num_workers"] == "2"
    assert run.data.params["learning_rate"] == "0.01" and run.data.params["batch_size"] == "8"
    assert run.data.tags["test"] == "test_train"
    assert run.data.tags["devices"] == "CPU:0"  # what rank 0 trained on (a GPU's name on GPU nodes)
    for key in ("loss", "gap", "examples_per_sec", "input_wait_fraction", "fp32_mib", "fp16_mib"):
        assert key in run.data.metrics, key
    waits = tracking.client(trained.config.tracking_uri).get_metric_history(trained.mlflow_run_id,
                                                                            "input_wait_fraction")
    assert waits and all(0 <= metric.value <= 1 for metric in waits)  # one a logged window
    locations = tracking.checkpoint_locations(trained.mlflow_run_id, trained.config.tracking_uri)
    assert locations == {read_state(path)["step"]: str(path) for path in trained.checkpoints}
    found = tracking.find_runs("test-train", "params.cluster_size = '4'", uri=trained.config.tracking_uri)
    assert trained.mlflow_run_id in [r.info.run_id for r in found]


@pytest.mark.slow
def test_a_training_run_listens_beyond_loopback_only_through_tensorflow(trained_and_listeners):
    """The one listener left beyond loopback: TF's MultiWorker gRPC server in each Ray Train
    worker (TF binds all interfaces and has no bind setting); README's security notes say so."""
    from _ray_helpers import is_loopback

    _, seen = trained_and_listeners
    assert {"gcs_server", "raylet"} <= set(seen.values()), seen  # the watch saw Ray's own servers
    assert any(name.startswith("ray::RayTrainWorker") for name in seen.values()), seen
    outside = {key: name for key, name in seen.items() if not is_loopback(key[0])}
    assert all(name.startswith("ray::RayTrainWorker") for name in outside.values()), f"beyond loopback: {outside}"


@pytest.mark.slow
def test_the_train_command_refuses_to_overwrite_a_run_or_to_resume_none(trained, netvlad_data, tmp_path, capsys):
    """`jobs/train.py` again on a run with checkpoints needs --resume, and --resume needs them.
    (Killed and resumed for real: tests/test_sweep.py, whose trials' drivers are `fit`.)"""
    flags = ["--cluster-size", "4", "--hidden-size", "16", "--classes", "20", "--iterations", "10",
             "--train-data", str(netvlad_data / "train*.tfrecord"),
             "--validate-data", str(netvlad_data / "validate*.tfrecord")]
    run_dir = trained.run_dir
    assert train_command.main([*flags, "--out", str(run_dir.parent), "--run-name", run_dir.name]) == 2
    assert f"error: {run_dir} already holds 4 checkpoint(s); pass --resume" in capsys.readouterr().err
    assert train_command.main([*flags, "--out", str(tmp_path), "--run-name", "new", "--resume"]) == 2
    assert f"error: --resume: {tmp_path / 'new'} holds no checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_a_run_refuses_to_resume_with_another_model(trained, netvlad_data):
    from raytrain8m.train.driver import fit

    config = _config(netvlad_data, Path(trained.config.out), max_steps=STEPS + EVERY, eval_every=0)
    with pytest.raises(CheckpointError, match="hidden_size: 16 != 32"):
        fit(config.replace(model=TINY.replace(hidden_size=32)), resources_per_worker=CPU_HALF)
    assert [read_state(path)["step"] for path in list_checkpoints(trained.run_dir)] == \
        [read_state(path)["step"] for path in trained.checkpoints]  # nothing written


# --- a diverging run: one plain error, only finite checkpoints, MLflow run FAILED ---------------

@pytest.mark.slow
@pytest.mark.parametrize("learning_rate, what", [
    (1e30, r"loss nan"),                                      # the loss itself is NaN
    (1e10, r"weights \(tower/gating_bn/moving_variance\)"),  # loss finite (~1e17), BN statistics inf
], ids=["nan-loss", "inf-weights"])
def test_diverging_run_fails_naming_the_step_and_keeps_only_finite_checkpoints(
        synthetic_dir, tmp_path, ray_session, learning_rate, what):
    import numpy as np

    from raytrain8m.train.driver import fit
    from raytrain8m.train.loop import TrainingError

    config = _config(synthetic_dir, tmp_path, learning_rate=learning_rate, run_name="diverging", num_workers=1,
                     max_failures=0, max_steps=10, checkpoint_every=1, eval_every=0)
    with pytest.raises(TrainingError, match=rf"^diverging \(K4-H16\): non-finite {what} at step \d+; "
                                            r"lower the learning rate \(now 1e\+\d+\)") as failure:
        fit(config)
    failed_at = int(re.search(r"at step (\d+)", str(failure.value)).group(1))
    checkpoints = list_checkpoints(tmp_path / "diverging")
    steps = [read_state(path)["step"] for path in checkpoints]
    assert failed_at > 1 and steps == list(range(1, failed_at))  # every step before the failure, none after
    for path in checkpoints:
        assert all(np.isfinite(tensor).all() for tensor in load_checkpoint(path).tensors.values()), path
    [run] = tracking.find_runs("test-train", "attributes.run_name = 'diverging'", uri=config.tracking_uri)
    assert run.info.status == "FAILED"


@pytest.mark.slow
def test_a_run_refused_before_its_workers_start_ends_failed_in_mlflow(synthetic_dir, tmp_path, ray_session):
    from raytrain8m.train.driver import fit

    config = _config(synthetic_dir, tmp_path, run_name="refused", num_workers=2)
    with pytest.raises(ConfigError, match="leave no CPU"):
        fit(config, resources_per_worker={"CPU": 1})  # ray_session's 2 CPUs, none left for reading
    [run] = tracking.find_runs("test-train", "attributes.run_name = 'refused'", uri=config.tracking_uri)
    assert run.info.status == "FAILED"


# --- the command's door: bad flags give one plain error and exit code 2 ------------------------

def test_bad_train_flags_fail_plainly(netvlad_data, tmp_path, monkeypatch, capsys):
    """Each a ConfigError or DataError found before Ray starts: one `error:` line, exit code 2.
    One case runs as `jobs/train.py` in a process of its own (the door itself), the rest in this
    process through the same `main`."""
    data = ["--train-data", str(netvlad_data / "train*.tfrecord"),
            "--validate-data", str(netvlad_data / "validate*.tfrecord"), "--out", str(tmp_path)]
    cases = {
        "cluster_size must be a positive integer": ["--cluster-size", "0", "--classes", "20", *data],
        "glob matches no file": ["--classes", "20", *data[2:], "--train-data", str(tmp_path / "no*.tfrecord")],
        "outside [0, 3)": ["--classes", "3", *data],
    }
    # An empty shard, a test split (no labels) as training data, an output under a regular file.
    empty, unlabelled = tmp_path / "empty", tmp_path / "unlabelled"
    empty.mkdir(), unlabelled.mkdir()
    (empty / "train0000.tfrecord").write_bytes(b"")
    for path in netvlad_data.glob("test*.tfrecord"):
        (unlabelled / path.name.replace("test", "train")).write_bytes(path.read_bytes())
    (tmp_path / "a-file").write_text("")
    cases.update({
        f"{empty / 'train0000.tfrecord'}: empty file (0 bytes)":
            ["--classes", "20", *data[2:], "--train-data", str(empty / "train*.tfrecord")],
        "videos without labels: training needs labelled splits":
            ["--classes", "20", *data[2:], "--train-data", str(unlabelled / "train*.tfrecord")],
        f"--out {tmp_path / 'a-file' / 'runs'}: {tmp_path / 'a-file'} is a file, not a directory":
            ["--classes", "20", *data[:4], "--out", str(tmp_path / "a-file" / "runs")],
    })
    env = {"RAYTRAIN8M_RUNS": str(tmp_path), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    (message, flags), *rest = cases.items()
    door = subprocess.run([sys.executable, str(ROOT / "jobs" / "train.py"), *flags], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=300)
    outcomes = {message: (door.returncode, door.stderr)}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for message, flags in rest:
        code = train_command.main(flags)
        outcomes[message] = (code, capsys.readouterr().err)
    for message, (code, stderr) in outcomes.items():
        assert code == 2, (message, stderr[-2000:])
        errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], stderr[-2000:]
        assert "Traceback" not in stderr
    if (tmp_path / "mlflow.db").exists():  # no run left RUNNING by a refused command
        runs = tracking.find_runs(uri=env["MLFLOW_TRACKING_URI"])
        assert all(run.info.status != "RUNNING" for run in runs), [run.info.run_name for run in runs]


# --- deterministic errors are not retried; resume takes the newest complete checkpoint on disk -----

def test_our_own_errors_are_not_retried_and_faults_are():
    import ray
    from ray.train import FailureConfig
    from ray.train.v2._internal.execution.failure_handling import FailureDecision
    from ray.train.v2.api.exceptions import WorkerGroupError

    from raytrain8m.data.schema import DataError
    from raytrain8m.train.failures import no_retry_policy, own_error

    original = DataError("/data/train0001.tfrecord", 3, "data CRC mismatch")
    wrapped = ray.exceptions.RayTaskError("SplitCoordinator.get", "Traceback …", original).as_instanceof_cause()
    assert isinstance(wrapped, DataError) and str(wrapped) != str(original)  # its text: Ray's traceback
    assert str(own_error(wrapped)) == "/data/train0001.tfrecord, record 3: data CRC mismatch"
    policy = no_retry_policy()(FailureConfig(max_failures=3))
    assert policy.make_decision(WorkerGroupError("w", {1: wrapped})) == FailureDecision.RAISE
    assert policy.make_decision(WorkerGroupError("w", {0: RuntimeError("node died")})) == FailureDecision.RETRY


def _corrupt_record(path: Path, record: int) -> None:
    """Flip a byte inside the data of the `record`-th record (its data CRC no longer matches)."""
    import struct

    raw, offset = bytearray(path.read_bytes()), 0
    for _ in range(record):
        offset += 12 + struct.unpack_from("<Q", raw, offset)[0] + 4
    raw[offset + 12 + 5] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.slow
def test_a_corrupt_record_met_while_training_fails_at_once_naming_it_without_retries_or_is_skipped(
        netvlad_data, tmp_path, ray_session):
    import json
    import shutil

    from raytrain8m.data.schema import DataError
    from raytrain8m.train.driver import fit

    data = tmp_path / "data"
    data.mkdir()
    for path in netvlad_data.glob("*.tfrecord"):
        shutil.copy(path, data / path.name)
    _corrupt_record(data / "train0001.tfrecord", 3)  # not in the first batch, which the driver checks
    config = _config(data, tmp_path, run_name="corrupt", num_workers=1, max_failures=3, eval_every=0)
    with pytest.raises(DataError) as failure:
        fit(config, resources_per_worker=CPU_HALF)
    assert str(failure.value) == f"{data / 'train0001.tfrecord'}, record 3: data CRC mismatch"
    record = json.loads((tmp_path / "corrupt" / "data_error.json").read_text())
    assert (record["path"], record["record"]) == (str(data / "train0001.tfrecord"), 3)
    assert len(record["failed_workers"]) == 1  # one attempt: not retried max_failures=3 times
    assert "Traceback" in (tmp_path / "corrupt" / "error.log").read_text()  # Ray's wrapping, for the curious
    [run] = tracking.find_runs("test-train", "attributes.run_name = 'corrupt'", uri=config.tracking_uri)
    assert run.info.status == "FAILED"

    # With skip_corrupt the record is left out, counted, and the count reaches the driver and MLflow.
    skipping = fit(config.replace(run_name="skipping", skip_corrupt=True), resources_per_worker=CPU_HALF)
    assert skipping.metrics["skipped_records"] == 1
    run = tracking.client(config.tracking_uri).get_run(skipping.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["skipped_records"] == 1


def test_a_teacher_export_sets_the_students_targets_and_a_wrong_one_is_refused(synthetic_dir, tmp_path):
    import numpy as np

    from raytrain8m.compose.ensemble import member_from_checkpoint
    from raytrain8m.compose.export import export_ensemble
    from raytrain8m.records.evaluate import load_predictor
    from raytrain8m.train.driver import check_inputs, resolve
    from raytrain8m.train.loop import distill_targets, load_teacher

    from _ensemble_helpers import random_checkpoint, tiny_config

    member = random_checkpoint(tmp_path / "member", tiny_config(4, 16), seed=1, step=1)
    export = export_ensemble([member_from_checkpoint(member, precision="fp16")], [1.0], tmp_path / "teacher")
    config = TrainConfig(model=TINY, train_data=str(synthetic_dir / "train*.tfrecord"), batch_size=4,
                         eval_every=0, eval_batches=0, teacher=str(export), distill_lambda=0.75,
                         out=str(tmp_path / "runs"))
    config = resolve(config)
    check_inputs(config)
    assert load_teacher(config.replace(teacher="")) is None
    teacher = load_teacher(config)
    rng = np.random.default_rng(0)
    frames, num_frames = rng.uniform(-2, 2, (3, 6, 1152)).astype(np.float32), np.array([6, 2, 4], np.int32)
    labels = (rng.random((3, 20)) < 0.2).astype(np.float32)
    soft = load_predictor(member)[0](frames, num_frames)
    np.testing.assert_allclose(distill_targets(teacher, config, frames, num_frames, labels),
                               0.75 * soft + 0.25 * labels, atol=2e-3)  # the teacher stores fp16
    assert distill_targets(None, config, frames, num_frames, labels) is labels
    with pytest.raises(ConfigError, match="predicts 20 classes, the student 30"):
        check_inputs(config.replace(model=TINY.replace(num_classes=30)))
    with pytest.raises(ConfigError, match="not an ensemble export"):
        check_inputs(config.replace(teacher=str(member)))
    with pytest.raises(ConfigError, match="distill_lambda"):
        TrainConfig(distill_lambda=1.5)


@pytest.mark.slow
def test_distill_job_trains_a_student_from_zoo_letters_on_ray_train(synthetic_dir, tmp_path_factory, tmp_path,
                                                                     ray_session):
    import json

    from _ensemble_helpers import trained_members, write_zoo

    members = trained_members(synthetic_dir, tmp_path_factory.getbasetemp() / "trained-members")
    zoo = write_zoo(tmp_path / "zoo.json", members, "AB")
    argv = ["--teacher", "AB", "--zoo", str(zoo), "--model", "K4-H16", "--classes", "20", "--iterations", "10",
            "--train-data", str(synthetic_dir / "train*.tfrecord"), "--validate-data",
            str(synthetic_dir / "validate*.tfrecord"), "--batch-size", "8", "--max-steps", "6",
            "--checkpoint-every", "3", "--eval-every", "0", "--eval-batches", "0", "--workers", "1",
            "--max-frames", "12", "--distill-lambda", "0.5", "--out", str(tmp_path / "runs"), "--run-name", "student",
            "--experiment", "test-distill"]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp_path / 'mlflow.db'}"
    try:
        assert distill_command.main(argv) == 0
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    teacher = tmp_path / "runs" / "student-teacher"
    assert json.loads((teacher / "ensemble.json").read_text())["members"][0]["letter"] == "A"
    checkpoints = list_checkpoints(tmp_path / "runs" / "student")
    assert [read_state(path)["step"] for path in checkpoints] == [3, 6]
    train_config = read_state(checkpoints[-1])["train_config"]
    assert train_config["teacher"] == str(teacher) and train_config["distill_lambda"] == 0.5
    assert distill_command.main(argv[2:]) == 2  # no teacher
