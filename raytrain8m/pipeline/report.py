"""The demo's report: `report.md` with its tables and PNGs, also logged to MLflow."""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from raytrain8m.models.config import member_label
from raytrain8m.runtime import atomic
from raytrain8m.select.zoo import Zoo

log = logging.getLogger(__name__)


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def plot_training_curves(zoo: Zoo, path: Path, tracking_uri: str | None = None) -> Path | None:
    """Loss over steps of every trained model, from its MLflow run."""
    from raytrain8m.records import tracking

    client = tracking.client(tracking_uri)
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    plotted = 0
    for entry in [*zoo.models, *zoo.eliminated]:
        if not entry.mlflow_run_id:
            continue
        history = sorted(client.get_metric_history(entry.mlflow_run_id, "loss"), key=lambda m: m.step)
        if history:
            label = f"{entry.letter} {entry.name}" if entry in zoo.models else f"{entry.name} (eliminated)"
            axes.plot([m.step for m in history], [m.value for m in history], marker=".", label=label)
            plotted += 1
    if not plotted:
        pyplot.close(figure)
        return None
    axes.set_xlabel("step")
    axes.set_ylabel("training loss (cross-entropy)")
    axes.set_title("training curves")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def plot_members_vs_ensemble(summary: dict[str, Any], zoo: Zoo, path: Path) -> Path:
    """Validate GAP of each member (best single and averaged checkpoint) and of the ensemble."""
    pyplot = _pyplot()
    ensemble = summary["ensemble"]
    by_checkpoint = {entry.checkpoint: entry for entry in zoo.models}
    labels, single, averaged = [], [], []
    for member in ensemble["members"]:
        entry = by_checkpoint.get(member["checkpoint"])
        labels.append(member_label(member.get("letter"), member.get("precision"), member["name"]))
        single.append(entry.best_single_gap if entry else 0.0)
        averaged.append(entry.gap if entry else (member.get("gap") or 0.0))
    figure, axes = pyplot.subplots(figsize=(7, 4.5))
    positions = range(len(labels))
    axes.bar([p - 0.2 for p in positions], single, width=0.4, label="best single checkpoint", color="lightsteelblue")
    axes.bar([p + 0.2 for p in positions], averaged, width=0.4, label="averaged checkpoints", color="steelblue")
    axes.axhline(ensemble["validate_gap"], color="darkorange", linewidth=2,
                 label=f"ensemble {ensemble['validate_gap']:.4f}")
    axes.set_xticks(list(positions), labels)
    low = min(single + averaged + [ensemble["validate_gap"]])
    axes.set_ylim(max(0.0, low - 0.05), min(1.0, ensemble["validate_gap"] + 0.03))
    axes.set_ylabel("validate GAP")
    axes.set_title("members vs ensemble")
    axes.legend(fontsize=8, loc="lower right")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    pyplot.close(figure)
    return path


def _compression_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | fp32 MiB | fp16 MiB | compression | GAP fp32 | GAP fp16 | change |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in rows:
        change = row["gap_fp16"] - row["gap_fp32"]
        lines.append(f"| {row['model']} | {row['fp32_mib']:.3f} | {row['fp16_mib']:.3f} | "
                     f"{1 - row['fp16_mib'] / row['fp32_mib']:.1%} | {row['gap_fp32']:.4f} | "
                     f"{row['gap_fp16']:.4f} | {change:+.5f} |")
    return "\n".join(lines)


def _report_gap(ensemble: dict) -> str:
    gap = ensemble.get("report_gap")
    return f", **{gap:.4f}** on the other held-out files (no choice was made on them)" if gap is not None else ""


def _precision_words(precision: str) -> str:
    return {"auto": "fp16 or int8, each the one that ranks best (int8 shown as A8)",
            "int8": "int8 (uint8 codes dequantized in the graph)"}.get(precision, "fp16 (the paper's)")


def _distill_section(distill: dict[str, Any] | None) -> str:
    """Beyond the paper: the students the zoo's best ensemble taught, and their GAPs in the zoo."""
    if not distill:
        return ""
    rows = "\n".join(f"| {s['model']} | {s['letter'] or '(eliminated)' if not s['error'] else 'failed'} | "
                      f"{'' if s['gap'] is None else format(s['gap'], '.4f')} |" for s in distill["students"])
    return f"""
## Distillation (beyond the paper)

Teacher: {distill['teacher']} (the zoo's best ensemble under the budget, GAP {distill['teacher_gap']:.4f}).
Students' targets: {distill['distill_lambda']:g} · teacher + {1 - distill['distill_lambda']:g} · labels; they
joined the zoo above, so the search ranked them as members.

| student | zoo letter | GAP (holdout, choose half) |
| --- | --- | ---: |
{rows}
"""


def write_report(summary: dict[str, Any], zoo: Zoo, out: Path) -> Path:
    """Write `out/report.md` (+ PNGs beside it) and log them to the sweep's MLflow parent run."""
    from raytrain8m.records import tracking

    pareto = Path(zoo.path).parent / "pareto.png" if zoo.path else None
    figures = {"pareto": pareto if pareto and pareto.is_file() else None,
               "training": plot_training_curves(zoo, out / "training_curves.png"),
               "ensemble": plot_members_vs_ensemble(summary, zoo, out / "members_vs_ensemble.png")}
    if figures["pareto"]:
        figures["pareto"] = Path(shutil.copyfile(figures["pareto"], out / "pareto.png"))
    ensemble = summary["ensemble"]
    members = ", ".join(f"{member_label(m.get('letter'), m.get('precision'), m['name'])} ({w:.2f})"
                        for m, w in zip(ensemble["members"], ensemble["weights"]))
    timings = "\n".join(f"| {stage} | {seconds:.0f} |" for stage, seconds in summary["timings_s"].items())
    text = f"""# raytrain8m demo report (scale `{summary['scale']}`)

Data: `{summary['data']}` ({'reused' if summary['data_reused'] else 'generated'}).
MLflow: sweep parent run `{summary['sweep_parent_run_id']}` (`make mlflow-ui`).

## Model zoo (the paper's Table 1)

```
{summary['zoo_table']}
```

![Pareto front](pareto.png)

![Training curves](training_curves.png)

## float16 compression

{_compression_table(summary['compression'])}

## Ensemble (budget {summary['budget_mib']:.2f} MiB, the paper's 1024 MiB scaled to these models)

Members (weights): {members}. Size {ensemble['size_mib']:.3f} MiB, GAP {ensemble['validate_gap']:.4f} on the
held-out files the choices were made on{_report_gap(ensemble)}. Members searched at
{_precision_words(summary.get('precision', 'fp16'))}.

```
{summary['search_table'] or ''}
```

![Members vs ensemble](members_vs_ensemble.png)
{_distill_section(summary.get('distill'))}
## Test-set predictions

`{summary['submission']['out']}`: {summary['submission']['videos']} videos (Kaggle format).

## Time per stage (seconds)

| stage | s |
| --- | ---: |
{timings}
"""
    report = out / "report.md"
    atomic.write_text(report, text)
    run_id = summary.get("sweep_parent_run_id")
    if run_id:
        from mlflow.exceptions import MlflowException
        client = tracking.client()
        for path in [report, *[p for p in figures.values() if p]]:
            try:
                client.log_artifact(run_id, str(path), "report")
            except (MlflowException, OSError) as error:
                log.warning("MLflow: could not log %s (%s)", path.name, error)
    return report
