"""The one shared tiny training run (conftest's `trained`) and the settings tests derive from it.

Real checkpoints for every test that reads them (training's own tests, averaging): 2 workers,
20 steps, a checkpoint every 5, a moving average of the weights, worker 1 SIGKILLed once at
step 7 (planned from here: `plan_crash`), on synthetic data whose topics leave no trace in the frame mean (what NetVLAD's
clustering sees and mean pooling cannot, as on the real data).
"""
from __future__ import annotations

from pathlib import Path

from raytrain8m.models import ModelConfig
from raytrain8m.train.config import TrainConfig

TINY = ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10)
STEPS, EVERY, CRASH_AT = 20, 5, 7
CPU_HALF = {"CPU": 0.5}  # ray_session has 2 CPUs: leave room for Ray Data's read tasks


def plan_crash(config: TrainConfig, step: int) -> None:
    """Fault injection from outside the run: worker 1 of `config`'s run kills itself once at `step`
    (`raytrain8m.train.loop.planned_crashes`)."""
    from raytrain8m.train.loop import CRASH_PLAN

    run_dir = Path(config.out) / config.run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CRASH_PLAN.format(step=step)).touch()


def train_config(data: Path, out: Path, **changes) -> TrainConfig:
    """The shared run's settings on `data` into `out`, with `changes`."""
    return TrainConfig(model=TINY, train_data=str(data / "train*.tfrecord"),
                       validate_data=str(data / "validate*.tfrecord"), batch_size=8, learning_rate=1e-2,
                       max_steps=STEPS, checkpoint_every=EVERY, eval_every=10, log_every=EVERY,
                       num_workers=2, max_frames=12, max_failures=1, out=str(out), run_name="tiny",
                       experiment="test-train", tracking_uri=f"sqlite:///{out / 'mlflow.db'}").replace(**changes)
