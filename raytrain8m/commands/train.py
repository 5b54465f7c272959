"""Train one model (Gated NetVLAD or NeXtVLAD) on Ray Train; checkpoints every N steps, tracked in MLflow.

Recipe (the paper's K16-H256 "P": 200k steps at batch 80, 2–3 days on one GTX 1080 Ti,
about half a day on one A100; validate GAP ≈ 0.855–0.86 on the 2018 frame-level data):

    python jobs/train.py --model K16-H256 --train-data 'gs://BUCKET/yt8m/frame/train*.tfrecord' \\
        --validate-data 'gs://BUCKET/yt8m/frame/validate*.tfrecord' --use-gpu --workers 1 \\
        --batch-size 80 --max-steps 200000 --out runs/train

    python jobs/train.py --model K16-H256 ... --resume     # continue the same run after a stop
    python jobs/train.py --model NX-K112-H2048-R16 ...    # NeXtVLAD (G=8, λ=2 by default; -G/-E/-R suffixes)
    python jobs/train.py --smoke                           # 1–2 min on a laptop CPU, synthetic data
    python jobs/train.py --smoke --ema-decay 0.999         # also a moving average of the weights (ema/…)

--holdout auto (default) holds out the paper's share of validate files (round(60/3844 · files),
at least 2): training reads train + the other validate files, evaluations the held-out ones
(OUT/RUN_NAME/split.json and the MLflow run record which); --holdout 0 trains on train only.
A run lives in OUT/RUN_NAME/checkpoint_<step>/ (model.json, state.json, weights); the same
command with --resume continues from its latest checkpoint. Prints the result as JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any, Sequence

from raytrain8m.models import NAME_FIELDS, ModelConfig
from raytrain8m.runtime import localray, settings
from raytrain8m.runtime.cli import LOG_PLAIN, Parser, add_verbose_flag, check_output, console
from raytrain8m.runtime.errors import ConfigError, Raytrain8mError, fail
from raytrain8m.train.config import MIXED_PRECISIONS, TrainConfig

# Flag names that differ from the field names (the field's own name is accepted too).
SHORT_NAMES = {"num_classes": "--classes", "learning_rate": "--lr", "num_workers": "--workers"}
NOT_FLAGS = {"model", "mlflow_run_id", "tracking_uri"}  # set by code, not by users
CHOICES = {"mixed_precision": MIXED_PRECISIONS}  # flags with a fixed set of values
SMOKE = dict(cluster_size=4, hidden_size=16, num_classes=20, iterations=10, batch_size=8, max_steps=20,
             checkpoint_every=10, eval_every=10, log_every=5, max_frames=12, num_workers=2,
             run_name="smoke", learning_rate=3e-3)


def _flag_names(name: str) -> list[str]:
    long_name = "--" + name.replace("_", "-")
    return [SHORT_NAMES[name], long_name] if name in SHORT_NAMES else [long_name]


def _add_fields(parser: argparse.ArgumentParser, cls: type, skip: set[str]) -> None:
    """One flag per dataclass field; the default shown is the dataclass's (the one default)."""
    group = parser.add_argument_group(cls.__name__)
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        default = field.default if field.default is not dataclasses.MISSING else None
        if field.type in ("bool", bool):
            group.add_argument(*_flag_names(field.name), dest=field.name, default=None,
                               action=argparse.BooleanOptionalAction, help=f"default: {default}")
        else:
            kind = {"int": int, "float": float}.get(str(field.type), str)
            group.add_argument(*_flag_names(field.name), dest=field.name, type=kind, default=None,
                               choices=CHOICES.get(field.name), help=f"default: {default!r}")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def build_parser(description: str | None = None) -> argparse.ArgumentParser:
    """The training flags (jobs/distill.py adds its own to them)."""
    parser = Parser(description=description or __doc__)
    parser.add_argument("--model", dest="model_name", help="K<cluster>-H<hidden> (Gated NetVLAD, e.g. K32-H1024) or "
                        "NX-K<cluster>-H<hidden>[-G<groups>][-E<expansion>][-R<reduction>] (NeXtVLAD) "
                        f"(default: {ModelConfig().name}); or --cluster-size/--hidden-size")
    parser.add_argument("--model-type", "--family", dest="family", default=None,
                        help="model family (default: from --model, else gated_netvlad; 'nextvlad'; 'baseline' "
                             "for the mean-pool baseline)")
    parser.add_argument("--resume", action="store_true",
                        help="continue OUT/RUN_NAME from its latest checkpoint (required if it has any)")
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny model on synthetic data (generated under RAYTRAIN8M_DATA/smoke)")
    _add_fields(parser, ModelConfig, {"family", "fp16", "int8", "rgb_size", "audio_size"})
    _add_fields(parser, TrainConfig, NOT_FLAGS)
    add_verbose_flag(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    given = {key: value for key, value in vars(args).items() if value is not None}
    if args.smoke:
        given = {**SMOKE, **given}
    model_fields = {field.name for field in dataclasses.fields(ModelConfig)}
    model_values: dict[str, Any] = {}
    if "model_name" in given:
        if "cluster_size" in given or "hidden_size" in given:
            raise ConfigError("give --model K<cluster>-H<hidden> or --cluster-size/--hidden-size, not both")
        named = ModelConfig.from_name(given["model_name"])
        model_values.update({field: getattr(named, field) for field in NAME_FIELDS})
    model_values.update({key: value for key, value in given.items() if key in model_fields})
    train_fields = {field.name for field in dataclasses.fields(TrainConfig)} - NOT_FLAGS
    train_values = {key: value for key, value in given.items() if key in train_fields}
    return TrainConfig(model=ModelConfig(**model_values), **train_values)


def _smoke_data(config: TrainConfig) -> TrainConfig:
    """Synthetic data for --smoke (made once), unless data flags point elsewhere."""
    from raytrain8m.data import generate

    root = settings.data_dir() / "smoke"
    if not (root / "synthetic.json").is_file():
        generate(str(root), videos=160, classes=config.model.num_classes, max_frames=config.max_frames,
                 shards=2, seed=0, progress=False)
    return config.replace(train_data=config.train_data or str(root / "train*.tfrecord"),
                          validate_data=config.validate_data or str(root / "validate*.tfrecord"))


def main(argv: Sequence[str] | None = None) -> int:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Train (or resume) what the parsed flags say; print the result as JSON."""
    # Only the workers use TensorFlow: importing it here cost the run's start 4–6 s on 2 cores.
    console(args.verbose, log_format=LOG_PLAIN)
    try:
        config = config_from_args(args)
        from raytrain8m.train.driver import fit, resolve

        check_output(resolve(config).out)
        localray.check_auth()  # at once, not after --smoke has made its data
        if args.smoke:
            config = _smoke_data(config)
        result = fit(config, resume="continue" if args.resume else "new")
    except Raytrain8mError as error:
        return fail(error)
    print(json.dumps({"run_dir": str(result.run_dir), "mlflow_run_id": result.mlflow_run_id,
                      "checkpoints": [str(path) for path in result.checkpoints],
                      "metrics": result.metrics}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
