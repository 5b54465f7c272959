"""Shared fixtures: one tiny synthetic data set and one local Ray per test session.

- `synthetic_dir` (Path): made once by `raytrain8m.data.generate` with SYNTHETIC below:
  DIR/train000{0,1}.tfrecord, validate000{0,1}.tfrecord, test000{0,1}.tfrecord (test
  unlabelled) and DIR/synthetic.json (the generator's summary). Treat it as read-only.
- `ray_session`: a local Ray with 2 CPUs started once by `raytrain8m.runtime.localray.start` (the
  commands' policy: loopback only, token auth, no dashboard), shut down at the end; request it
  in any test that builds Ray Datasets, tasks or actors.
- `netvlad_data` (Path): synthetic data without the topics' trace in the frame mean.
- `trained` (train.TrainResult): the one shared tiny Ray Train run on it (tests/_trained_run.py),
  real checkpoints for every test that only reads them; `trained_and_listeners` adds every TCP
  listener of this process's Ray while it ran. Treat both as read-only.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# 120 videos (84 train, 24 validate, 12 test), 20 classes, 3..12 frames a video.
SYNTHETIC = dict(videos=120, classes=20, max_frames=12, shards=2, seed=0)


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    from raytrain8m.data.synthetic import generate

    out = tmp_path_factory.mktemp("synthetic")
    generate(str(out), progress=False, **SYNTHETIC)
    return out


@pytest.fixture(scope="session")
def ray_session():
    import os

    import ray

    from raytrain8m.runtime import localray

    started = False
    if not ray.is_initialized():
        address = os.environ.pop("RAY_ADDRESS", None)  # never join a stray cluster
        try:
            started = localray.start(num_cpus=2)
        finally:
            if address is not None:
                os.environ["RAY_ADDRESS"] = address
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def netvlad_data(tmp_path_factory) -> Path:
    """Synthetic data whose topics leave no trace in the frame mean (no topic offset): what
    NetVLAD's clustering sees and mean pooling cannot, as on the real data."""
    from raytrain8m.data.synthetic import generate

    out = tmp_path_factory.mktemp("netvlad-data")
    generate(str(out), **{**SYNTHETIC, "topic_offset": 0.0}, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_and_listeners(netvlad_data, tmp_path_factory, ray_session):
    """The shared run (tests/_trained_run.py) and every TCP listener of this process's Ray while it ran."""
    from raytrain8m.train.driver import fit

    from _ray_helpers import ListenerWatch
    from _trained_run import CPU_HALF, CRASH_AT, plan_crash, train_config

    out = tmp_path_factory.mktemp("train")
    # Data given relative to the driver's directory, as a user types it; workers run elsewhere.
    config = train_config(Path(netvlad_data.name), out, ema_decay=0.9)
    plan_crash(config, CRASH_AT)
    here = os.getcwd()
    os.chdir(netvlad_data.parent)
    try:
        with ListenerWatch() as listeners:
            result = fit(config, resources_per_worker=CPU_HALF, tags={"test": "test_train"})
        return result, listeners.seen
    finally:
        os.chdir(here)


@pytest.fixture(scope="session")
def trained(trained_and_listeners):
    return trained_and_listeners[0]
