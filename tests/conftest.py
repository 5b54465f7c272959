"""Shared fixtures: one tiny synthetic data set and one local Ray per test session.

- `synthetic_dir` (Path): made once by `raytrain8m.data.generate` with SYNTHETIC below:
  DIR/train000{0,1}.tfrecord, validate000{0,1}.tfrecord, test000{0,1}.tfrecord (test
  unlabelled) and DIR/synthetic.json (the generator's summary). Treat it as read-only.
- `ray_session`: a local Ray with 2 CPUs started once by `raytrain8m.localray.start` (the
  commands' policy: loopback only, token auth, no dashboard), shut down at the end; request it
  in any test that builds Ray Datasets, tasks or actors.
"""
from __future__ import annotations

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

    from raytrain8m import localray

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
