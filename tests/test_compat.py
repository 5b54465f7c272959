"""Each version-sensitive hook in raytrain8m/runtime/compat.py against the installed Ray and Keras: an
upgrade that moves or drops one fails here, by name. Fast: one test runs a small Ray Data
execution on the session's local Ray; the others start nothing."""
from __future__ import annotations

import pytest

from raytrain8m.runtime import compat


def test_the_tensorflow_backend_gives_each_worker_a_tf_config_tensorflow_reads(monkeypatch):
    import tensorflow as tf

    assert issubclass(compat._TensorflowBackend, compat.Backend)
    assert compat.TensorflowBackendConfig().backend_cls is compat._TensorflowBackend
    workers = [compat._worker_address(), compat._worker_address()]
    assert all(address.rsplit(":", 1)[1].isdigit() for address in workers)
    monkeypatch.delenv("TF_CONFIG", raising=False)
    compat._set_tf_config(workers, 1)
    resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
    assert resolver.cluster_spec().as_dict() == {"worker": workers}
    assert (resolver.task_type, resolver.task_id) == ("worker", 1)


def test_train_v2_trainer_takes_our_backend_and_a_failure_policy_factory(monkeypatch):
    import inspect

    from ray.train.v2.api import data_parallel_trainer

    assert "backend_config" in inspect.signature(compat.DataParallelTrainer).parameters
    monkeypatch.setattr(data_parallel_trainer, "create_failure_policy", data_parallel_trainer.create_failure_policy)
    marker = object()
    assert compat.install_failure_policy(lambda config: marker)
    assert data_parallel_trainer.create_failure_policy(None) is marker
    policy, decision = compat.default_failure_policy()
    assert callable(getattr(policy, "make_decision")) and hasattr(decision, "RAISE")


def test_train_v2_internals_we_read_are_where_we_read_them():
    from ray.train.v2._internal import constants
    from ray.train.v2._internal.execution import context
    from ray.train.v2._internal.state import state_actor

    assert context.__file__.endswith(".py")  # the logger quiet_ray_train_reports names
    assert constants.CHECKPOINT_MANAGER_SNAPSHOT_FILENAME == compat.CHECKPOINT_SNAPSHOT
    assert callable(state_actor.get_state_actor)
    for method in ("get_train_runs", "get_train_run_attempts"):
        assert hasattr(state_actor.TrainStateActor, method), method


def test_the_raylet_message_filter_drops_only_what_it_is_told(monkeypatch, capsys):
    from ray._private import worker

    installed = worker.print_to_stdstream  # Ray's own, or a filter an earlier test's local Ray installed
    monkeypatch.setattr(worker, "print_to_stdstream", getattr(installed, "__wrapped__", installed))
    assert compat.filter_raylet_messages(lambda line: "chatter" in line)
    assert compat.filter_raylet_messages(lambda line: False)  # a second install keeps the first
    message = {"lines": ["some chatter", "a real failure"], "pid": "raylet", "ip": "127.0.0.1",
               "is_err": False, "job": "", "actor_name": "", "task_name": ""}
    worker.print_to_stdstream(message, ignore_prefix=True)
    out = capsys.readouterr().out
    assert "a real failure" in out and "chatter" not in out


def test_ray_data_runs_our_paced_scheduling_callback_at_every_step_of_its_loop(ray_session):
    import time

    import numpy as np
    import ray

    steps: list[float] = []

    class Recorded(compat.PacedScheduling):
        def on_execution_step(self, executor) -> None:
            super().on_execution_step(executor)
            steps.append(time.perf_counter())

    dataset = ray.data.range(64, override_num_blocks=8)
    dataset.context.print_on_execution_start = False
    assert compat.pace_data_scheduling(dataset.context) and compat.pace_data_scheduling(dataset.context)
    assert dataset.context.custom_execution_callback_classes.count(compat.PacedScheduling) == 1
    dataset.context.custom_execution_callback_classes.append(Recorded)
    assert sum(len(batch["id"]) for batch in dataset.iter_batches(batch_size=8)) == 64
    assert len(steps) >= 2  # Ray called it at each step of the loop …
    assert np.diff(steps).min() >= compat.DATA_SCHEDULING_STEP_S  # … and the steps were paced


def test_keras_still_sums_gradients_in_the_hook_we_skip():
    import keras

    assert hasattr(keras.optimizers.Adam, compat.KERAS_GRADIENT_SUM)
    adam = compat.without_gradient_sum(keras.optimizers.Adam)
    assert issubclass(adam, keras.optimizers.Adam)
    with pytest.raises(RuntimeError, match=compat.KERAS_GRADIENT_SUM):
        compat.without_gradient_sum(object)


def test_tensorflow_loads_with_scikit_learn_and_pandas_hidden_and_both_import_after():
    """raytrain8m.runtime.lazy hides them while TensorFlow loads (Keras imports them only if present,
    ≈3 s of the import); a Keras that needed them would fail here, and every worker with it."""
    import subprocess
    import sys

    probe = ("import sys\n"
             "from raytrain8m.runtime.lazy import tensorflow as tf\n"
             "tf.constant(1)\n"
             "loaded = sorted(name for name in ('sklearn', 'pandas') if name in sys.modules)\n"
             "import sklearn, pandas\n"
             "print(loaded, sklearn.__name__, pandas.__name__)\n")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines()[-1] == "[] sklearn pandas"


def test_without_a_state_api_the_trainer_leaves_out_only_the_placement_group_cleaner(monkeypatch):
    """Ray Train's PlacementGroupCleaner polls the State API each second; a local Ray without its
    dashboard serves none, so there the trainer runs without it, and with every other callback."""
    from ray.train import ScalingConfig

    from raytrain8m.runtime import settings

    trainer = compat.DataParallelTrainer(lambda: None, backend_config=compat.TensorflowBackendConfig(),
                                         scaling_config=ScalingConfig(num_workers=1))

    def callbacks(no_state_api: str) -> list[str]:
        monkeypatch.setenv(settings.NO_STATE_API, no_state_api)
        return [type(callback).__name__ for callback in trainer._create_default_callbacks()]

    served, unserved = callbacks("0"), callbacks("1")
    assert compat.PlacementGroupCleanerCallback.__name__ in served
    assert unserved == [name for name in served if name != compat.PlacementGroupCleanerCallback.__name__]
