"""What the weights' moving average buys: validate GAP of the raw weights vs their EMA, per decay.

    python bench/bench_ema.py        # synthetic data (720 validate videos), K8-H24 trained with the
                                     # project's own train step, seeded (about 2 min on 2 CPUs)

The same step as `jobs/train.py --ema-decay D` (one process, no Ray). Prints a table; the
last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np


def run(data: Path, decay: float, steps: int, every: int) -> list[dict]:
    import tensorflow as tf

    from raytrain8m.data.batches import iter_batches, to_model_inputs
    from raytrain8m.models import MODELS, ModelConfig
    from raytrain8m.records.evaluate import evaluate, model_from_tensors, predictor
    from raytrain8m.train.config import TrainConfig
    from raytrain8m.train.loop import make_ema, make_optimizer, make_train_step

    model_config = ModelConfig(cluster_size=8, hidden_size=24, num_classes=20, iterations=10)
    config = TrainConfig(model=model_config, batch_size=32, learning_rate=3e-3, max_frames=12, ema_decay=decay)
    batches = [to_model_inputs(b, 20, 12) for b in iter_batches(str(data / "train*.tfrecord"), 64, num_classes=20)]
    frames = np.concatenate([f for f, _, _ in batches])
    num_frames, labels = np.concatenate([n for _, n, _ in batches]), np.concatenate([y for _, _, y in batches])
    tf.random.set_seed(0)
    model = MODELS["gated_netvlad"](model_config, seed=1)
    optimizer = make_optimizer(config)
    optimizer.build([v for v in model.variables.values() if v.trainable])
    ema = make_ema(model, config)
    step = make_train_step(model, optimizer, tf.distribute.get_strategy(), config, ema)
    rng = np.random.default_rng(0)
    validate, rows = str(data / "validate*.tfrecord"), []
    for index in range(1, steps + 1):
        chosen = rng.integers(0, len(frames), 32)
        step(frames[chosen], num_frames[chosen], labels[chosen])
        if index % every == 0:
            raw = {name: v.numpy() for name, v in model.variables.items()}
            averaged = {**raw, **{name: v.numpy() for name, v in ema.items()}}
            gaps = [evaluate(predictor(model_from_tensors(model_config, tensors)), validate, 20,
                             progress=False)["gap"] for tensors in (raw, averaged)]
            rows.append({"decay": decay, "step": index, "gap_raw": float(gaps[0]), "gap_ema": float(gaps[1])})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--decays", default="0.99,0.999")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args(argv)
    from raytrain8m.data.synthetic import generate

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-ema-") as work:
        data = Path(work) / "data"
        generate(str(data), videos=1200, classes=20, max_frames=12, shards=1, seed=0, validate_fraction=0.6,
                 test_fraction=0.05, progress=False)
        for decay in (float(d) for d in args.decays.split(",")):
            rows += run(data, decay, args.steps, args.every)
    print(f"{'decay':>7}{'step':>6}{'GAP raw':>10}{'GAP EMA':>10}{'change':>10}")
    for row in rows:
        print(f"{row['decay']:>7g}{row['step']:>6}{row['gap_raw']:>10.4f}{row['gap_ema']:>10.4f}"
              f"{row['gap_ema'] - row['gap_raw']:>+10.4f}")
    print(json.dumps({"rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
