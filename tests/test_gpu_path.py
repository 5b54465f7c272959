"""The `--use-gpu` path on a Ray node that declares a GPU this machine does not have.

Ray schedules by declared resources, so `ray.init(num_gpus=1)` gives workers and actors a
GPU id and `CUDA_VISIBLE_DEVICES`, as on a real GPU node; TensorFlow then finds no device
behind it, which is what a GPU node with a CPU-only TensorFlow (or a CUDA mismatch) looks
like. Training and inference must refuse that plainly instead of running on the CPU. What
needs a real GPU (CUDA kernels, NCCL) is not tested here.
"""
from __future__ import annotations

import pytest

from raytrain8m.models import ModelConfig
from raytrain8m.records import tracking
from raytrain8m.runtime.errors import ConfigError
from raytrain8m.train.config import TrainConfig

from _ensemble_helpers import random_checkpoint, tiny_config

NO_GPU_SEEN = r"Ray assigned GPU 0 \(CUDA_VISIBLE_DEVICES=0\), but TensorFlow .* sees no GPU"


@pytest.fixture(scope="module")
def logical_gpu_ray():
    """A local Ray declaring 2 CPUs and 1 GPU; the session's Ray comes back afterwards."""
    import ray

    session_ray = ray.is_initialized()
    if session_ray:
        ray.shutdown()
    from raytrain8m.runtime import localray

    localray.start(num_cpus=2, num_gpus=1)  # the commands' policy: loopback, token auth
    yield ray
    ray.shutdown()
    if session_ray:
        localray.start(num_cpus=2)


@pytest.mark.slow
def test_training_on_a_gpu_tensorflow_cannot_see_fails_plainly(logical_gpu_ray, synthetic_dir, tmp_path):
    from raytrain8m.train.driver import fit, resolve

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    config = TrainConfig(model=ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10),
                         train_data=str(synthetic_dir / "train*.tfrecord"),
                         validate_data=str(synthetic_dir / "validate*.tfrecord"), batch_size=8, max_steps=4,
                         checkpoint_every=2, eval_every=0, eval_batches=0, num_workers=1, use_gpu=True,
                         max_failures=0, max_frames=12, out=str(tmp_path / "train"), run_name="gpu-run",
                         tracking_uri=uri)
    with pytest.raises(ConfigError, match=NO_GPU_SEEN) as error:
        fit(config, resources_per_worker={"CPU": 0.5, "GPU": 1})
    assert "gpu-run worker 0" in str(error.value) and "tensorflow[and-cuda]" in str(error.value)
    (run,) = tracking.client(uri).search_runs(
        [tracking.client(uri).get_experiment_by_name(resolve(config).experiment).experiment_id])
    assert run.info.status == "FAILED"
    assert not (tmp_path / "train" / "gpu-run").is_dir() or not list((tmp_path / "train" / "gpu-run").glob("checkpoint_*"))


@pytest.mark.slow
def test_inference_on_a_gpu_tensorflow_cannot_see_fails_plainly_and_writes_no_csv(
        logical_gpu_ray, synthetic_dir, tmp_path):
    from raytrain8m.compose.ensemble import member_from_checkpoint
    from raytrain8m.compose.export import export_ensemble
    from raytrain8m.compose.infer import infer

    member = member_from_checkpoint(random_checkpoint(tmp_path / "a", tiny_config(4, 16), seed=1, step=1))
    exported = export_ensemble([member], [1.0], tmp_path / "export")
    out = tmp_path / "submission.csv"
    with pytest.raises(ConfigError, match=NO_GPU_SEEN):
        infer(exported, str(synthetic_dir / "test*.tfrecord"), out, batch_size=4, use_gpu=True, progress=False)
    assert not out.exists()
