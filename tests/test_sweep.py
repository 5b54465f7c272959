"""The sweep: grid parsing, the memory model, placement on GPU types, and Tune runs of it.

The slow tests start a simulated mixed-GPU cluster (`ray.cluster_utils.Cluster`): a CPU
head, a node labelled gpu-type=T4 and one labelled gpu-type=1060, each with one CPU and no
GPU. GPU memory is scaled down (TEST_PROFILES) so that the tiny test models (iterations
10, 20 classes) need different batch sizes on the two types, as real models do on real
cards. Trials train on CPU but must land on the node type their plan chose.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from raytrain8m.models import ModelConfig, num_parameters, size_mib
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.runtime.gpus import GPU_PROFILES, GpuProfile
from raytrain8m.sweep.placement import (
    CPU,
    PAPER_GRID,
    largest_batch,
    memory_estimate,
    memory_gib,
    parse_grid,
    parse_inventory,
    plan,
    plan_table,
)

REPO = Path(__file__).resolve().parents[1]
TINY = dict(num_classes=20, iterations=10)
# Simulated cards and batch sizes scaled to the tiny models and the 84-video train split
TEST_PROFILES = {"T4": GpuProfile("T4", 0.95, 8.1, "test"), "1060": GpuProfile("1060", 0.79, 4.4, "test")}
TEST_BATCHES = (40, 20, 10, 5)
SWEEP_GRID = "K4-H16,K8-H16,K32-H16,K64-H16"
# What the simulated cluster runs: one model per GPU type, each at its type's batch (the plan's
# finer choices are checked above without Ray; each Ray Train run here costs about a minute).
CLUSTER_GRID = "K8-H16,K64-H16"


# --- grid and memory model (no Ray) -------------------------------------------------------

def test_grid_from_names_product_and_paper_alias():
    assert [c.name for c in parse_grid("K24-H1440, K32-H1024")] == ["K24-H1440", "K32-H1024"]
    grid = parse_grid("K8-H16", "8,16", "16,32", num_classes=20)
    assert [c.name for c in grid] == ["K8-H16", "K8-H32", "K16-H16", "K16-H32"]  # K8-H16 once
    assert all(c.num_classes == 20 for c in grid)
    assert len(parse_grid("paper")) == 28 == len(PAPER_GRID.split(","))
    with pytest.raises(ConfigError, match="K<cluster>-H<hidden>"):
        parse_grid("K32H1024")
    with pytest.raises(ConfigError, match="both cluster sizes and hidden sizes"):
        parse_grid("", "8,16")
    with pytest.raises(ConfigError, match="empty grid"):
        parse_grid("")


def test_sweep_file_yaml_sets_grid_and_training(tmp_path):
    from raytrain8m.sweep.tune import sweep_spec

    path = tmp_path / "sweep.yaml"
    path.write_text("cluster_sizes: [4, 8]\nhidden_sizes: [16]\nclasses: 20\n"
                    "train: {max_steps: 7, batch_size: 16}\n")
    spec = sweep_spec(sweep_file=path, max_steps=9)  # a flag beats the file
    assert [m.name for m in spec.models] == ["K4-H16", "K8-H16"]
    assert spec.train.max_steps == 9 and spec.train.batch_size == 16
    assert spec.train.model.num_classes == 20
    path.write_text("grid: K4-H16\ntrain: {max_step: 7}\n")
    with pytest.raises(ConfigError, match="unknown train config keys: max_step"):
        sweep_spec(sweep_file=path)
    path.write_text("grids: K4-H16\n")
    with pytest.raises(ConfigError, match="unknown sweep keys grids"):
        sweep_spec(sweep_file=path)


def test_memory_model_counts_weights_adam_gradients_and_activations():
    config = ModelConfig.from_name("K24-H1440")
    estimate = memory_estimate(config, 80)
    assert estimate.weights == pytest.approx(num_parameters(config) * 4 / 2**30)
    assert estimate.weights * 2**10 == pytest.approx(size_mib(config), rel=1e-9)  # 714.93 MiB
    assert estimate.optimizer == pytest.approx(2 * estimate.weights)
    assert estimate.gradients == pytest.approx(estimate.weights)
    # NetVLAD's residuals dominate: batch × iterations × (1024·K + 128·K/2) floats, kept for backward
    residuals = 2 * 80 * 300 * (1024 * 24 + 128 * 12) * 4 / 2**30
    assert residuals < estimate.activations < 1.1 * residuals
    assert memory_gib(config, 160) > memory_gib(config, 80) > memory_gib(config, 40)
    assert memory_gib(ModelConfig.from_name("K100-H800"), 80) > memory_gib(config, 80)


def test_memory_model_knows_nextvlad_activations():
    config = ModelConfig.from_name("NX-K128-H2048")
    estimate = memory_estimate(config, 80)
    assert estimate.weights == pytest.approx(num_parameters(config) * 4 / 2**30)
    # per frame: the expanded features (λN) and the group assignments (G·K) dominate, kept for backward
    per_frame = (2 * 1024 + 8 * 128) + (2 * 128 + 4 * 64)
    lower = 2 * 80 * 300 * per_frame * 4 / 2**30
    assert lower < estimate.activations < 4 * lower
    assert memory_gib(ModelConfig.from_name("NX-K128-H2048-E4"), 80) > memory_gib(config, 80)


def test_a_grid_mixes_families_and_each_trial_rebuilds_its_own():
    from raytrain8m.sweep.tune import sweep_spec, trial_model

    spec = sweep_spec(grid="K16-H256,NX-K128-H2048,NX-K112-H2048-R16", classes=20)
    assert [m.family for m in spec.models] == ["gated_netvlad", "nextvlad", "nextvlad"]
    placements = plan(spec.models, parse_inventory("T4,L4"), 80)
    assert sorted(p.model for p in placements) == sorted(m.name for m in spec.models)
    for placement in placements:
        rebuilt = trial_model(placement.model, spec.train.model)
        assert rebuilt in spec.models and rebuilt.num_classes == 20
        assert placement.memory_gib == pytest.approx(memory_gib(rebuilt, placement.batch_size), abs=0.01)


def test_batch_size_is_the_largest_that_fits_the_type():
    config = ModelConfig.from_name("K24-H1440")
    assert largest_batch(config, GPU_PROFILES["L4"].memory_gib) == 160
    assert largest_batch(config, GPU_PROFILES["1080Ti"].memory_gib) == 80
    assert largest_batch(config, GPU_PROFILES["1060"].memory_gib) == 20
    assert largest_batch(ModelConfig.from_name("K150-H600"), GPU_PROFILES["1060"].memory_gib) is None


def test_config_that_fits_nowhere_is_refused_by_name_before_anything_starts():
    configs = parse_grid("K16-H256,K64-H1024,K150-H600,K32-H1024")
    with pytest.raises(ConfigError) as error:
        plan(configs, {"1060": 2}, 80)  # 6 GiB: K64-H1024 needs 6.6 GiB even at batch 20
    message = str(error.value)
    assert "2 config(s)" in message and "K150-H600" in message and "K64-H1024" in message
    assert "K16-H256" not in message and "K32-H1024" not in message
    assert len(plan(configs, {"1060": 2, "1080Ti": 1}, 80)) == 4  # an 11 GiB card takes them


def test_plan_sends_largest_configs_to_the_largest_gpus_first():
    placements = plan(parse_grid("paper"), parse_inventory("1080Ti,1060,T4,L4"), 80)
    assert len(placements) == 28
    # launch order: the most memory-hungry configs (at batch 160) first
    memory = [memory_gib(ModelConfig.from_name(p.model), 160) for p in placements]
    by_model = {p.model: p for p in placements}
    assert placements[0].model == "K150-H600" and placements[0].gpu_type == "L4"
    assert by_model["K100-H800"].gpu_type == "L4"  # 23 GiB at batch 80: only an L4 holds it
    for p in placements:  # never planned beyond the card's memory
        assert p.memory_gib <= GPU_PROFILES[p.gpu_type].memory_gib
        assert p.batch_size in (160, 80, 40, 20)
    assert memory == sorted(memory, reverse=True)
    assert {p.gpu_type for p in placements} == {"1080Ti", "1060", "T4", "L4"}  # all types used
    table = plan_table(placements)
    assert "K24-H1440" in table and "714.93" in table and "381.40" in table


def test_cpu_only_cluster_runs_everything_on_cpu_with_the_default_batch():
    placements = plan(parse_grid("K4-H16,K150-H600"), {}, 32)
    assert {(p.gpu_type, p.batch_size) for p in placements} == {(CPU, 32)}


def test_tiny_test_profiles_make_batch_sizes_follow_the_type():
    grid = parse_grid(SWEEP_GRID, **TINY)
    by_type = {name: {c.name: largest_batch(c, profile.memory_gib, TEST_BATCHES) for c in grid}
               for name, profile in TEST_PROFILES.items()}
    assert by_type["T4"] == {"K4-H16": 40, "K8-H16": 40, "K32-H16": 40, "K64-H16": 20}
    assert by_type["1060"] == {"K4-H16": 40, "K8-H16": 40, "K32-H16": 5, "K64-H16": None}
    placed = {p.model: p for p in plan(grid, {"T4": 1, "1060": 1}, 16, 1, TEST_BATCHES, TEST_PROFILES)}
    assert (placed["K64-H16"].gpu_type, placed["K64-H16"].batch_size) == ("T4", 20)
    assert (placed["K32-H16"].gpu_type, placed["K32-H16"].batch_size) == ("T4", 40)  # not 1060 at 5
    assert "1060" in {p.gpu_type for p in placed.values()}
    with pytest.raises(ConfigError, match="K400-H16"):
        plan(parse_grid("K4-H16,K400-H16", **TINY), {"T4": 1, "1060": 1}, 16, 1, TEST_BATCHES, TEST_PROFILES)


def test_dry_run_prints_the_plan_and_exits(tmp_path):
    done = subprocess.run([sys.executable, "jobs/sweep.py", "--grid", "paper", "--classes", "3862",
                           "--dry-run", "--gpus", "1080Ti,1060,T4,L4"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "K150-H600" in done.stdout and "GPU type" in done.stdout and "trials per type" in done.stdout
    refused = subprocess.run([sys.executable, "jobs/sweep.py", "--grid", "K150-H600", "--dry-run",
                              "--gpus", "1060"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "K150-H600" in refused.stderr
    assert refused.stderr.splitlines()[-1].startswith("error: ")


def test_a_student_named_like_a_model_of_the_grid_is_refused_before_anything_runs(capsys):
    from raytrain8m.commands import sweep as sweep_command

    assert sweep_command.main(["--grid", "K4-H16,K8-H16", "--classes", "20", "--dry-run", "--gpus", "T4",
                               "--distill", "K2-H8,K8-H16"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --distill K8-H16: also in the grid; a student needs a "
                                               "model name of its own in the zoo")


# --- the sweep's driver killed, then resumed (its own local Ray in a subprocess) ----------

def _session_processes(sid: int) -> dict[int, str]:
    """{pid: command line} of the live processes of session `sid` (Linux /proc). Ray's
    workers move to process groups of their own, but none leaves the driver's session."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, session, …
            if int(fields[3]) == sid and fields[0] not in "ZX":
                found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile
    return found


def _kill_session(sid: int) -> dict[int, str]:
    """SIGKILL whatever of session `sid` is still alive (only this test's processes); return them."""
    left = _session_processes(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def _tune_statuses(tune_dir: Path) -> dict[str, str]:
    """{trial name: status} from Tune's experiment state on disk, what `Tuner.restore` reads."""
    for path in sorted(tune_dir.glob("experiment_state-*.json"), reverse=True):
        try:
            state = json.loads(path.read_text())
            trials = [json.loads(trial[0]) for trial in state["trial_data"]]
            return {trial["custom_trial_name"]: trial["status"] for trial in trials}
        except (OSError, ValueError, KeyError, IndexError, TypeError):
            return {}  # being written; read it again
    return {}


def _files(*roots: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """{path: (inode, mtime_ns, size, sha1)} of every file under `roots`: equal only if none
    was rewritten, replaced or touched."""
    return {str(path): (path.stat().st_ino, path.stat().st_mtime_ns, path.stat().st_size,
                        hashlib.sha1(path.read_bytes()).digest())
            for root in roots for path in sorted(root.rglob("*")) if path.is_file()}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="finds Ray's processes in /proc")
def test_sweep_driver_killed_then_resumed_finishes_only_the_unfinished_trials(synthetic_dir, tmp_path):
    """`jobs/sweep.py` SIGKILLed (its whole process group) after one of two trials finished and
    right after the other wrote its first checkpoint: `--status` shows one done; `--resume` runs
    only the other, from its newest checkpoint, overwriting none, in the same MLflow run; the
    parent keeps one child run per model; resuming the finished sweep starts nothing; the
    resume's distill stage trains a student from the zoo's best ensemble, which joins the zoo.
    (Also the kill test of a single run: a trial's driver is `fit`, as `jobs/train.py`'s is.)"""
    import mlflow

    from raytrain8m.records.checkpoint import list_checkpoints, read_state
    from raytrain8m.select.zoo import load_zoo
    from raytrain8m.sweep.records import SWEEP_JSON, TRAIN_DIR, TRIAL_JSON, sweep_status
    from raytrain8m.pipeline.stages import STUDENTS_DIR, TEACHER_DIR, distill_stage
    from raytrain8m.sweep.tune import TUNE_DIR, resume_sweep

    models, student = ["K4-H16", "K4-H24"], "K2-H8"
    # Many cheap steps after the first checkpoint: a window of a few seconds in which the test,
    # however starved of CPU, sees that checkpoint before the trial ends by itself.
    max_steps, every = 100, 20
    out, uri = tmp_path / "sweep", f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}  # a local Ray of its own
    env.update(MLFLOW_TRACKING_URI=uri, RAYTRAIN8M_RUNS=str(tmp_path / "runs"))
    env.pop("TUNE_GLOBAL_CHECKPOINT_S", None)  # Tune's default: experiment state saved every >= 10 s
    command = [sys.executable, "jobs/sweep.py", "--grid", ",".join(models), "--classes", "20",
               "--train-data", str(synthetic_dir / "train*.tfrecord"),
               "--validate-data", str(synthetic_dir / "validate*.tfrecord"), "--out", str(out),
               "--max-steps", str(max_steps), "--checkpoint-every", str(every), "--max-concurrent", "1", "--smoke"]
    log_path = tmp_path / "first.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        driver = subprocess.Popen(command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # its own session and process group
    sid = driver.pid
    try:
        # 1. Kill as soon as one trial has written its trial.json and the other its first
        # checkpoint, whatever Tune's own state files say at that moment (Tune copies them one
        # after the other; resuming never reads them, so a kill between two copies must not matter).
        deadline, done, started_too = time.monotonic() + 240, [], []
        while time.monotonic() < deadline and driver.poll() is None and not (done and started_too):
            done = [model for model in models if (out / TRAIN_DIR / model / TRIAL_JSON).is_file()]
            started_too = [model for model in models if model not in done and (out / TRAIN_DIR / model).is_dir()
                           and list_checkpoints(out / TRAIN_DIR / model)]
            time.sleep(0.05)
        assert driver.poll() is None, f"the sweep ended by itself ({driver.returncode}):\n" \
                                      f"{log_path.read_text()[-3000:]}"
        assert len(done) == 1 and started_too, f"not one trial finished and the other checkpointed in " \
                                              f"240 s: {done}\n{log_path.read_text()[-3000:]}"
        os.killpg(driver.pid, signal.SIGKILL)  # 2. the driver's process group; Ray's processes must go with it
        (finished,) = done
        (unfinished,) = started_too
        statuses = _tune_statuses(out / TUNE_DIR)
        finished_files = _files(out / TRAIN_DIR / finished)
        killed_at = time.monotonic() - started

        driver.wait(timeout=30)
        unfinished_dir = out / TRAIN_DIR / unfinished
        progress = sorted(path.name for path in unfinished_dir.iterdir())
        deadline = time.monotonic() + 60
        while _session_processes(sid) and time.monotonic() < deadline:
            time.sleep(0.5)
        gone_after = time.monotonic() - started - killed_at
        left = _kill_session(sid)
        assert not left, f"Ray processes outlived their killed driver by 60 s: {left}"
        print(f"killed at {killed_at:.0f} s with Tune's saved state {statuses}; {unfinished}'s run dir then: "
              f"{progress}; its Ray processes gone {gone_after:.1f} s after the kill")
        status = {s.model: (s.done, s.max_steps) for s in sweep_status(out)}
        assert status == {finished: (True, max_steps), unfinished: (False, max_steps)}  # what --status shows
        before = list_checkpoints(unfinished_dir)
        newest = read_state(before[-1])["step"]
        assert every <= newest < max_steps, newest
        untouched = _files(*before)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
        _kill_session(sid)

    # 3. Resume: only the unfinished trial runs; then the zoo of both, and the distill stage: a
    # student trained from the zoo's best ensemble, in its own sweep, joins the zoo.
    resumed_at = time.monotonic()
    log_path = tmp_path / "resume.log"
    with log_path.open("w") as log:
        resume = subprocess.Popen([sys.executable, "jobs/sweep.py", "--out", str(out), "--resume",
                                   "--distill", student, "--distill-lambda", "0.5"], cwd=REPO,
                                  env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        resume.wait(timeout=420)
    except subprocess.TimeoutExpired:
        pytest.fail(f"--resume still running after 420 s:\n"
                    f"{log_path.read_text()[-3000:]}")
    finally:
        if resume.poll() is None:
            os.killpg(resume.pid, signal.SIGKILL)
            resume.wait(timeout=30)
        _kill_session(resume.pid)
    print(f"resume: {time.monotonic() - resumed_at:.0f} s; total {time.monotonic() - started:.0f} s")
    assert resume.returncode == 0, log_path.read_text()[-4000:]

    # the finished trial was not trained again: the same checkpoint files, untouched, no new ones
    assert _files(out / TRAIN_DIR / finished) == finished_files
    steps = {model: [read_state(path)["step"] for path in list_checkpoints(out / TRAIN_DIR / model)]
             for model in models}
    assert steps == {model: list(range(every, max_steps + 1, every)) for model in models}
    assert read_state(list_checkpoints(out / TRAIN_DIR / finished)[-1])["resumed_from"] == 0
    # the killed trial went on from its newest checkpoint and rewrote none of those before it
    after = list_checkpoints(unfinished_dir)
    assert all(read_state(path)["resumed_from"] == newest for path in after if read_state(path)["step"] > newest)
    assert {key: value for key, value in _files(*after).items() if key in untouched} == untouched
    assert _tune_statuses(out / f"{TUNE_DIR}-resume-1") == {unfinished: "TERMINATED"}  # only it ran
    # a finished sweep resumes to the same result without starting Ray or any trial
    again = resume_sweep(out)
    assert {t.model: (t.error, t.metrics["step"]) for t in again.trials} == {model: (None, max_steps) for model in models}
    assert sorted(path.name for path in out.glob("tune*")) == [TUNE_DIR, f"{TUNE_DIR}-resume-1"]
    with pytest.raises(ConfigError, match="no sweep to resume"):
        resume_sweep(tmp_path / "elsewhere")
    shown = subprocess.run([sys.executable, "jobs/sweep.py", "--out", str(out), "--status"], cwd=REPO,
                           env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stderr
    assert f"2/2 trials done; {2 * max_steps}/{2 * max_steps} checkpointed steps (100%)" in shown.stdout
    assert all(re.search(rf"{model} .* {max_steps}/{max_steps} +done +0\.\d{{4}}", shown.stdout) for model in models)
    assert all((out / TRAIN_DIR / model / TRIAL_JSON).is_file() for model in models)
    zoo = load_zoo(out / "zoo.json")
    assert sorted(model.name for model in [*zoo.models, *zoo.eliminated]) == sorted([*models, student])
    # the zoo rebuilt with the student evaluated only the student's: the rest were read back
    builds = re.findall(r"select\.zoo: zoo scoring: \d+ checkpoint scores from training, "
                        r"(?:(\d+) from an earlier scoring, )?(\d+) evaluations", log_path.read_text())
    assert len(builds) == 2 and int(builds[1][0] or 0) == int(builds[0][1]) > 0, builds
    teacher = json.loads((out / TEACHER_DIR / "ensemble.json").read_text())
    assert {member["name"] for member in teacher["members"]} <= set(models)
    student_config = read_state(list_checkpoints(out / STUDENTS_DIR / TRAIN_DIR / student)[-1])["train_config"]
    assert student_config["teacher"] == str(out / TEACHER_DIR) and student_config["distill_lambda"] == 0.5
    assert student_config["train_data"] == json.loads((out / SWEEP_JSON).read_text())["train"]["train_data"]
    with pytest.raises(ConfigError, match=f"holds the students {student}; resume with the same --distill"):
        distill_stage(again, zoo, "K2-H12", 1024)  # the stage ran: only the same students may finish it

    # MLflow: one child run per model under the sweep's parent. The killed trial's run, when
    # its `fit` had started, is in its run dir's mlflow.json and the resumed `fit` goes on in it.
    parent_id = json.loads((out / SWEEP_JSON).read_text())["sweep"]["parent_run_id"]
    client = mlflow.MlflowClient(tracking_uri=uri)
    parent = client.get_run(parent_id)
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{parent_id}'")
    runs = {model: sorted(run.info.status for run in children if run.info.run_name == model)
            for model in models}
    print(f"MLflow child runs by model: {runs}")
    assert runs == {model: ["FINISHED"] for model in models}
    # the killed trial's run holds its loss from before the kill and after the resume
    [killed] = [run for run in children if run.info.run_name == unfinished]
    logged = [m.step for m in client.get_metric_history(killed.info.run_id, "loss")]
    assert min(logged) <= newest < max(logged) == max_steps, logged


# --- on a simulated mixed-GPU cluster -----------------------------------------------------

@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    """A CPU head and two simulated GPU nodes (labels, CPUs underneath); not the session Ray."""
    import ray
    from ray.cluster_utils import Cluster

    session_ray = ray.is_initialized()
    if session_ray:
        ray.shutdown()  # a Cluster needs its own ray.init, not `ray_session`'s
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1, labels={"gpu-type": "T4"})
    cluster.add_node(num_cpus=1, labels={"gpu-type": "1060"})
    ray.init(address=cluster.address, log_to_driver=False)
    yield cluster
    ray.shutdown()
    cluster.shutdown()
    if session_ray:  # give later tests back the session's Ray, as conftest started it
        from raytrain8m.runtime import localray
        localray.start(num_cpus=2)


def _spec(data: Path, grid: str = CLUSTER_GRID, **train):
    from raytrain8m.sweep.tune import sweep_spec

    settings = dict(max_steps=4, checkpoint_every=2, eval_every=0, eval_batches=2, log_every=2,
                    max_failures=0)
    settings.update(train)
    spec = sweep_spec(grid, train_data=str(data / "train*.tfrecord"),
                      validate_data=str(data / "validate*.tfrecord"), **settings)
    return spec.replace(models=tuple(m.replace(**TINY) for m in spec.models),
                        train=spec.train.replace(model=spec.train.model.replace(**TINY)),
                        batch_sizes=TEST_BATCHES)


@pytest.fixture()
def mlflow_store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("RAYTRAIN8M_RUNS", str(tmp_path / "runs"))
    return uri


@pytest.mark.slow
def test_a_mixed_cluster_sweep_places_by_type_retries_a_killed_worker_and_logs_child_runs(
        gpu_cluster, synthetic_dir, mlflow_store, tmp_path):
    from raytrain8m.records import tracking
    from raytrain8m.records.checkpoint import list_checkpoints, read_state
    from raytrain8m.records.holdout import SPLIT_JSON, load_split
    from raytrain8m.select.zoo import build_zoo, load_zoo
    from raytrain8m.sweep.records import SWEEP_JSON, TRAIN_DIR, scoring_data
    from raytrain8m.sweep.tune import plan_sweep, run_sweep
    from raytrain8m.train.loop import CRASH_MARKER, CRASH_PLAN

    spec = _spec(synthetic_dir)
    placements = plan_sweep(spec, profiles=TEST_PROFILES)
    assert {p.gpu_type for p in placements} == {"T4", "1060"}
    # The first trial's worker SIGKILLs itself once at step 3 (after the step-2 checkpoint),
    # planned by a file in its run directory; its retry then overlaps the others. Train gives up
    # (max_failures=0), so the trial fails, Tune retries it, and fit resumes from step 2.
    crashing = placements[0].model
    out = tmp_path / "sweep"
    (out / TRAIN_DIR / crashing).mkdir(parents=True)
    (out / TRAIN_DIR / crashing / CRASH_PLAN.format(step=3)).touch()
    started = time.monotonic()
    result = run_sweep(spec, out, max_failures=2, placements=placements, profiles=TEST_PROFILES)
    wall = time.monotonic() - started
    print(f"{CLUSTER_GRID} sweep on the simulated cluster: {wall:.0f} s")
    assert [t.error for t in result.trials] == [None] * 2
    assert (out / TRAIN_DIR / crashing / CRASH_MARKER.format(step=3)).exists()  # the kill did happen
    planned = {p.model: p for p in placements}
    for trial in result.trials:
        # the workers ran on the node type the plan chose, with that type's batch size
        assert trial.metrics["node_gpu_types"] == planned[trial.model].gpu_type, trial
        assert trial.metrics["placed_ok"] == 1
        assert trial.metrics["batch_size"] == planned[trial.model].batch_size
        assert trial.metrics["step"] == 4
        checkpoints = list_checkpoints(trial.run_dir)
        assert [read_state(path)["step"] for path in checkpoints] == [2, 4]
        # the retried trial went on from its step-2 checkpoint; the others ran once, from 0
        assert read_state(checkpoints[-1])["resumed_from"] == (2 if trial.model == crashing else 0)
    children = tracking.child_runs(result.parent_run_id, uri=mlflow_store)
    assert sorted(run.info.run_name for run in children) == sorted(CLUSTER_GRID.split(","))  # one run each
    for run in children:
        assert run.data.params["gpu_type"] == planned[run.info.run_name].gpu_type
        assert run.data.params["batch_size"] == str(planned[run.info.run_name].batch_size)
        assert "fp32_mib" in run.data.metrics and "gap" in run.data.metrics

    # The paper's split (auto: both of the fixture's 2 validate files held out, one to choose on,
    # one to report on): no held-out file, and so no held-out video, reaches a training worker.
    split = load_split(out / SPLIT_JSON)
    assert split.holdout == 2 and split.separate
    held = set(split.choose) | set(split.report)
    worker_files = json.loads((out / SWEEP_JSON).read_text())["train"]["train_data"]  # every trial's workers'
    assert worker_files == list(split.train) and not held & set(worker_files)
    assert not _video_ids(worker_files) & _video_ids(sorted(held))
    for trial in result.trials:  # each fit recorded the sweep's split, in its run dir and in MLflow
        assert load_split(Path(trial.run_dir) / SPLIT_JSON) == split
    assert {run.data.params["holdout_files"] for run in children} == {"2"}

    # Every later stage reads that holdout: the zoo chooses on one half and reports on the other,
    # scoring its checkpoints as Ray tasks at once; serially it gives the same letters and GAPs.
    choose, report, described = scoring_data(out)
    assert (choose, report) == (list(split.choose), list(split.report))
    zoo = build_zoo([t.run_dir for t in result.completed], choose, result.out,
                    parent_run_id=result.parent_run_id, report_data=report, split=described)
    assert len(zoo.models) + len(zoo.eliminated) == 2
    assert load_zoo(result.out / "zoo.json").table() == zoo.table()
    assert (zoo.choose_data, zoo.report_data) == (choose, report) and "split: 2 held-out" in zoo.table()
    assert all(entry.report_gap is not None for entry in zoo.models)
    assert (result.out / "pareto.png").is_file()
    artifacts = {a.path for a in tracking.client(mlflow_store).list_artifacts(result.parent_run_id, "zoo")}
    assert {"zoo/zoo.json", "zoo/pareto.png", "zoo/zoo.txt"} <= artifacts
    # each model's per-checkpoint holdout GAP is a curve over steps in its MLflow run, each point
    # once: training logged it as it scored its checkpoints, and the zoo read those scores
    for run in children:
        history = tracking.client(mlflow_store).get_metric_history(run.info.run_id, "holdout_gap")
        assert sorted(point.step for point in history) == [2, 4]
    assert zoo.timing["from_training"] == 4  # two checkpoints of each trial
    serial = build_zoo([t.run_dir for t in result.completed], choose, tmp_path / "serial", report_data=report,
                       split=described, parallel=False, recorded=False)

    def scores(built):
        return {entry.letter: (entry.name, entry.best_single_gap, entry.averaged_gap, entry.report_gap)
                for entry in built.models}

    assert scores(serial).keys() == scores(zoo).keys()
    for letter, (name, *gaps) in scores(zoo).items():
        assert scores(serial)[letter][0] == name
        assert scores(serial)[letter][1:] == pytest.approx(gaps, abs=1e-6)
    print(f"zoo scoring: parallel {zoo.timing}; serial {serial.timing}")
    assert serial.timing["from_training"] == 0  # it evaluated every checkpoint, and agrees above
    assert zoo.timing["evaluations"] == serial.timing["evaluations"] - 4 > 0
    # the ensemble reads the zoo's holdout: chosen on one half, its report GAP on the other
    from raytrain8m.compose.ensemble import make_ensemble

    letters = "".join(entry.letter for entry in zoo.models[:2])
    ensemble = make_ensemble(letters, None, zoo_path=zoo.path, budget_mib=1e6, progress=False, track=False)
    assert ensemble.validate_gap is not None and ensemble.report_gap is not None


def _video_ids(paths) -> set[str]:
    from raytrain8m.data.batches import iter_batches

    return {str(i) for batch in iter_batches(list(paths), 64, num_classes=20) for i in batch["id"]}
