"""Ray Train's entry point, `train_loop_per_worker(config)`, in a module that imports no TensorFlow.

Ray Train's controller unpickles the function it is given, which imports that function's
module: handing it this one rather than `train.loop` keeps TensorFlow (≈9 s to import on 2 cores)
out of the controller's start-up, which every run waits on. On the worker, reading starts
(in a thread, `train.prefetch.Prefetcher`) before the loop and TensorFlow are imported, so Ray
Data's start-up overlaps that import instead of following it.
"""


def train_loop_per_worker(config: dict) -> None:
    import ray.train

    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.prefetch import Prefetcher, batches

    settings = TrainConfig.from_dict(config)
    rank = ray.train.get_context().get_world_rank()
    with Prefetcher(batches(ray.train.get_dataset_shard("train"), settings, rank), settings.prefetch_batches) as reading:
        from raytrain8m.train.loop import train_loop_per_worker as run

        run(config, reading)
