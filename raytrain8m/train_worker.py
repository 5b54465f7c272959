"""Ray Train's entry point, `train_loop_per_worker(config)`, in a module that imports nothing.

Ray Train's controller unpickles the function it is given, which imports that function's
module. Handing it this one rather than `trainloop` keeps TensorFlow (≈9 s to import on 2 cores)
out of the controller's start-up, which every run waits on; the worker imports the loop when it
first calls it.
"""


def train_loop_per_worker(config: dict) -> None:
    from raytrain8m.trainloop import train_loop_per_worker as run

    run(config)
