"""The zoo: Pareto elimination, letters that stay pinned, zoo.json and the Pareto plot."""
from __future__ import annotations

import pytest

from raytrain8m.runtime.errors import ConfigError
from raytrain8m.select.zoo import Zoo, ZooEntry, carry_pins, load_zoo, pareto, plot_pareto


def entry(name: str, fp32: float, gap: float) -> ZooEntry:
    k, h = (int(part[1:]) for part in name.split("-"))
    return ZooEntry(name=name, cluster_size=k, hidden_size=h, num_classes=20, fp32_mib=fp32,
                    fp16_mib=fp32 / 2, best_single_gap=gap, best_single_checkpoint=f"/ckpt/{name}")


def paper_like() -> list[ZooEntry]:
    return [entry("K24-H1440", 714.93, 0.8744), entry("K20-H1600", 767.27, 0.8700),  # bigger, worse
            entry("K32-H1024", 549.24, 0.8717), entry("K16-H1024", 481.11, 0.8717),   # same GAP, smaller
            entry("K16-H800", 384.27, 0.8712), entry("K16-H256", 158.65, 0.8594)]


def test_inferior_models_are_eliminated():
    kept, eliminated = pareto(paper_like())
    assert {e.name for e in eliminated} == {"K20-H1600", "K32-H1024"}
    assert [e.name for e in Zoo.build(paper_like()).models] == ["K24-H1440", "K16-H1024", "K16-H800",
                                                                "K16-H256"]


def test_letters_follow_decreasing_size():
    zoo = Zoo.build(paper_like())
    assert "".join(e.letter for e in zoo.models) == "ABCD"
    assert zoo.members("AD")[1].name == "K16-H256"


def test_a_zoo_of_the_papers_28_models_gets_letters_past_z():
    # sizes and GAPs that rise together: none is inferior, all 28 stay
    entries = [entry(f"K{k}-H{h}", 10.0 * (k + h), 0.8 + 0.001 * (k + h))
               for k, h in zip(range(4, 32), range(100, 128))]
    zoo = Zoo.build(entries)
    assert "".join(e.letter for e in zoo.models) == "ABCDEFGHIJKLMNOPQRSTUVWXYZab"
    assert zoo.members("Zab")[2].name == "K4-H100"  # the smallest comes last, as in Table 1
    with pytest.raises(ConfigError, match="zoo letters are A–Z"):
        zoo.pin("7", "K4-H100")


def test_pinned_letters_stay_pinned_across_rebuilds(tmp_path):
    zoo = Zoo.build(paper_like())
    zoo.pin("Y", "K24-H1440")
    zoo.pin("P", "K16-H256")
    zoo.save(tmp_path / "zoo.json")
    # A rebuild with a new, larger model and different scores keeps Y and P where they were.
    rebuilt = paper_like() + [entry("K32-H1280", 900.0, 0.8760)]
    rebuilt = Zoo.build(carry_pins(rebuilt, load_zoo(tmp_path / "zoo.json")))
    letters = {e.name: e.letter for e in rebuilt.models}
    assert letters["K24-H1440"] == "Y" and letters["K16-H256"] == "P"
    assert len(set(letters.values())) == len(letters)
    with pytest.raises(ConfigError, match="already pinned"):
        rebuilt.pin("Y", "K16-H800")


def test_zoo_json_round_trip_and_table(tmp_path):
    zoo = Zoo.build(paper_like())
    loaded = load_zoo(zoo.save(tmp_path / "zoo.json"))
    assert [e.name for e in loaded.models] == [e.name for e in zoo.models]
    table = loaded.table()
    assert "K24-H1440 (A)" in table and "eliminated (inferior): K20-H1600, K32-H1024" in table


def test_pareto_plot_draws_the_zoo_it_is_given(tmp_path):
    import matplotlib.image
    import numpy as np

    image = matplotlib.image.imread(plot_pareto(Zoo.build(paper_like()), tmp_path / "pareto.png"))
    assert image.shape[0] >= 300 and image.shape[1] >= 400
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10  # drawn, not a blank canvas
    again = matplotlib.image.imread(plot_pareto(Zoo.build(paper_like()), tmp_path / "again.png"))
    fewer = matplotlib.image.imread(plot_pareto(Zoo.build(paper_like()[:3]), tmp_path / "fewer.png"))
    assert np.array_equal(again, image) and not np.array_equal(fewer, image)  # the zoo's points, drawn alike


def test_zoo_job_pins_a_letter_and_prints_json(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    path = Zoo.build(paper_like()).save(tmp_path / "zoo.json")
    job = [sys.executable, str(Path(__file__).resolve().parents[1] / "jobs" / "zoo.py"), str(path)]
    pinned = subprocess.run(job + ["--pin", "Y=K24-H1440"], capture_output=True, text=True, timeout=60)
    assert pinned.returncode == 0, pinned.stderr
    assert "K24-H1440 (Y)" in pinned.stdout
    assert {e.name: e.letter for e in load_zoo(path).models if e.pinned} == {"K24-H1440": "Y"}
    # the others keep the letters the user has seen; zoo.txt shows the new letters too
    assert [e.letter for e in load_zoo(path).models] == ["Y", "B", "C", "D"]
    assert "K24-H1440 (Y)" in (tmp_path / "zoo.txt").read_text()
    swapped = subprocess.run(job + ["--pin", "B=K16-H256"], capture_output=True, text=True, timeout=60)
    assert swapped.returncode == 0, swapped.stderr
    assert {e.name: e.letter for e in load_zoo(path).models} == {  # K16-H256's D went to B's model
        "K24-H1440": "Y", "K16-H1024": "D", "K16-H800": "C", "K16-H256": "B"}
    shown = subprocess.run(job + ["--json"], capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["models"][0]["letter"] == "Y"
    wrong = subprocess.run(job + ["--pin", "Z=K9-H9"], capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and wrong.stderr.startswith("error: ") and "K9-H9" in wrong.stderr


def test_a_model_is_scored_by_the_better_of_its_average_and_best_single():
    better, worse = entry("K16-H256", 158.65, 0.8576), entry("K16-H400", 217.05, 0.8619)
    better.averaged_gap, better.averaged_checkpoint = 0.8594, "/avg/K16-H256"
    worse.averaged_gap, worse.averaged_checkpoint = 0.8600, "/avg/K16-H400"  # early: averaging lost
    assert (better.gap, better.checkpoint) == (0.8594, "/avg/K16-H256")
    assert (worse.gap, worse.checkpoint) == (0.8619, "/ckpt/K16-H400")


def test_the_ema_weights_are_one_more_candidate_and_win_when_they_score_best(synthetic_dir, tmp_path_factory,
                                                                              tmp_path):
    from raytrain8m.models import variable_specs
    from raytrain8m.records.checkpoint import load_checkpoint
    from raytrain8m.select.zoo import build_zoo

    from _ensemble_helpers import random_checkpoint, tiny_config, trained_members

    trained = load_checkpoint(trained_members(synthetic_dir, tmp_path_factory.getbasetemp() / "trained-members")[0])
    config = tiny_config(4, 16)
    # A run whose raw weights never learned but whose moving average holds trained weights.
    averages = {f"ema/{spec.name}": trained.tensors[spec.name] for spec in variable_specs(config) if spec.trainable}
    for step, seed in ((10, 5), (20, 6)):
        random_checkpoint(tmp_path / "run" / f"checkpoint_{step:08d}", config, seed=seed, step=step, extra=averages)
    zoo = build_zoo([tmp_path / "run"], str(synthetic_dir / "validate*.tfrecord"), tmp_path / "zoo")
    (model,) = zoo.models
    assert model.ema_gap > max(model.best_single_gap, model.averaged_gap) + 0.05
    assert (model.gap, model.checkpoint) == (model.ema_gap, str(tmp_path / "zoo" / "ema" / "K4-H16"))
    written = load_checkpoint(model.checkpoint)
    assert written.ema_weights is None and written.step == 20
    assert "EMA GAP" in zoo.table() and f"{model.ema_gap:.4f}" in zoo.table()
    reloaded = load_zoo(tmp_path / "zoo" / "zoo.json").models[0]
    assert reloaded.checkpoint == model.checkpoint


def test_a_zoo_built_again_in_the_same_place_reads_its_earlier_scores_until_a_file_changes(synthetic_dir, tmp_path):
    """The distill stage rebuilds a sweep's zoo to add its students: the evaluations of the first
    build (singles, averaged ranges, report GAPs) are read from `scores.json`, keyed by content,
    so a checkpoint or data file rewritten at the same path is evaluated again."""
    import os
    import shutil

    from raytrain8m.select.scoring import SCORES_JSON, Evaluation, ScoreCache, evaluate_one
    from raytrain8m.select.zoo import build_zoo

    from _ensemble_helpers import random_checkpoint, tiny_config

    config, run = tiny_config(4, 16), tmp_path / "run"
    for step, seed in ((10, 1), (20, 2), (30, 3)):
        random_checkpoint(run / f"checkpoint_{step:08d}", config, seed=seed, step=step)
    choose, report = (str(shutil.copy2(synthetic_dir / f"validate000{i}.tfrecord", tmp_path)) for i in (0, 1))

    def build():
        return build_zoo([run], [choose], tmp_path / "zoo", report_data=[report], parallel=False)

    first = build()
    assert first.timing["evaluations"] > 3 and first.timing["from_earlier"] == 0
    assert (tmp_path / "zoo" / SCORES_JSON).is_file()
    again = build()  # nothing changed: nothing evaluated, the same choices and GAPs
    assert (again.timing["evaluations"], again.timing["from_earlier"]) == (0, first.timing["evaluations"])
    assert again.table() == first.table() and again.models[0].report_gap == first.models[0].report_gap

    random_checkpoint(run / "checkpoint_00000020", config, seed=4, step=20)  # other weights, same path
    changed = build()
    assert 0 < changed.timing["evaluations"] < first.timing["evaluations"]
    rewritten = Evaluation(config.name, (str(run / "checkpoint_00000020"),), (choose,))
    cache = ScoreCache(tmp_path / "zoo" / SCORES_JSON)
    assert cache.get(cache.key(rewritten))["gap"] == pytest.approx(evaluate_one(rewritten)["gap"], abs=1e-6)

    for path in (choose, report):  # rewritten data (a newer modification time): all evaluated again
        os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    assert build().timing["from_earlier"] == 0 < changed.timing["from_earlier"]
