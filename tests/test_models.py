"""Gated NetVLAD, NeXtVLAD and the baseline: variables, sizes (the paper's Table 1, NeXtVLAD's
formula), names, forward-pass contracts."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from raytrain8m.commands import sizes as sizes_command
from raytrain8m.models import (
    BIG_TENSORS,
    MODELS,
    GatedNetVLAD,
    ModelConfig,
    NeXtVLAD,
    build,
    create_variables,
    from_variables,
    half_tensors,
    num_parameters,
    size_mib,
    variable_specs,
)
from raytrain8m.models.baseline import MeanPoolLogistic, mean_of_first_frames
from raytrain8m.models.nextvlad import formula_parameters
from raytrain8m.runtime.errors import ConfigError

# The paper's Table 1: model, fp32 MiB, fp16 MiB (3862 classes).
TABLE1 = {
    "K24-H1440": (714.93, 381.40), "K32-H1280": (679.73, 358.85), "K100-H800": (663.87, 339.76),
    "K16-H1280": (594.59, 316.21), "K32-H1024": (549.24, 286.85), "K20-H960": (469.18, 245.31),
    "K16-H800": (384.27, 199.61), "K64-H512": (365.53, 186.11), "K100-H400": (357.21, 180.93),
    "K32-H600": (339.72, 174.20), "K32-H512": (297.27, 151.85), "K16-H512": (263.13, 134.71),
    "K8-H512": (246.07, 126.15), "K16-H400": (217.05, 110.50), "K10-H400": (207.04, 105.47),
    "K32-H256": (175.78, 88.85), "K10-H300": (168.87, 85.58), "K16-H256": (158.65, 80.21),
}

TINY = ModelConfig(cluster_size=4, hidden_size=16, num_classes=20, iterations=10)


def _inputs(batch: int = 3, frames: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, (batch, frames, TINY.feature_size)).astype(np.float32),
            np.array([5, 12, 1][:batch], np.int32))


def test_variable_names_and_shapes_follow_the_paper():
    config = ModelConfig(cluster_size=16, hidden_size=256, num_classes=3862)
    shapes = {spec.name: spec.shape for spec in variable_specs(config)}
    assert shapes["tower/video_VLAD/cluster_weights"] == (1024, 16)
    assert shapes["tower/video_VLAD/cluster_weights2"] == (1, 1024, 16)
    assert shapes["tower/audio_VLAD/cluster_weights"] == (128, 8)
    assert shapes["tower/hidden1_weights"] == (1024 * 16 + 128 * 8, 256)
    assert shapes["tower/hidden2_weights"] == (256, 512)
    assert shapes["tower/gating_weights"] == (512, 512)
    assert shapes["tower/gates/weights"] == (512, 3862 * 6)
    assert shapes["tower/experts/weights"] == (512, 3862 * 5)
    assert shapes["tower/gating_prob_weights"] == (3862, 3862)
    assert shapes["tower/gating_prob_bn/moving_variance"] == (3862,)
    variables = create_variables(TINY, zeros=True)
    assert {name: tuple(v.shape) for name, v in variables.items()} == \
        {spec.name: spec.shape for spec in variable_specs(TINY)}
    assert not variables["tower/hidden1_bn/moving_mean"].trainable


def test_sizes_job_json_equals_the_papers_table1(capsys):
    assert sizes_command.main(["--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [row["name"] for row in rows] == [*TABLE1, "NX-K128-H2048", "NX-K112-H2048-R16"]
    assert {row["family"] for row in rows[:len(TABLE1)]} == {"gated_netvlad"}
    for row in rows[:len(TABLE1)]:
        assert (round(row["fp32_mib"], 2), round(row["fp16_mib"], 2)) == TABLE1[row["name"]], row["name"]
        config = ModelConfig.from_name(row["name"])
        assert (row["cluster_size"], row["hidden_size"]) == (config.cluster_size, config.hidden_size)
        assert round(size_mib(config), 2) == row["fp32_mib"]  # the accounting agrees with the built variables
        assert row["params"] == num_parameters(config)


def test_sizes_job_reports_a_bad_name_plainly(capsys):
    assert sizes_command.main(["K0-H256"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "cluster_size" in err and "Traceback" not in err


@pytest.mark.parametrize("model_type", sorted(MODELS))
def test_predictions_depend_only_on_the_first_num_frames(model_type):
    config = TINY.replace(family=model_type)
    model = MODELS[model_type](config, seed=1)
    frames, num_frames = _inputs()
    changed = frames.copy()
    for i, count in enumerate(num_frames):
        changed[i, count:] = np.random.default_rng(i).uniform(-2, 2, changed[i, count:].shape)
    before = model(frames, num_frames, training=False).numpy()
    after = model(changed, num_frames, training=False).numpy()
    np.testing.assert_allclose(before, after, rtol=1e-6, atol=1e-7)
    shorter = model(frames[:, :num_frames.max()], num_frames, training=False).numpy()
    np.testing.assert_allclose(before, shorter, rtol=1e-5, atol=1e-6)
    assert before.shape == (3, 20) and np.all((before >= 0) & (before <= 1))


def test_fp16_storage_casts_the_four_big_tensors_only():
    fp32 = build(TINY, seed=2)
    fp16_config = TINY.replace(fp16=True)
    variables = create_variables(fp16_config, zeros=True)
    for name, variable in variables.items():
        assert variable.dtype == (tf.float16 if name in BIG_TENSORS else tf.float32), name
        variable.assign(tf.cast(fp32.variables[name], variable.dtype))
    fp16 = GatedNetVLAD(fp16_config, variables)
    frames, num_frames = _inputs()
    expected = fp32(frames, num_frames).numpy()
    got = fp16(frames, num_frames).numpy()
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=2e-3)
    assert size_mib(fp16_config) < size_mib(TINY)


def test_baseline_is_a_mean_pooled_logistic_regression():
    model = MODELS["baseline"](TINY.replace(family="baseline"), seed=0)
    assert isinstance(model, MeanPoolLogistic)
    frames, num_frames = _inputs()
    pooled = mean_of_first_frames(frames, num_frames).numpy()
    np.testing.assert_allclose(pooled[0], frames[0, :5].mean(0), rtol=1e-5, atol=1e-6)
    logits = pooled @ model.variables["baseline/weights"].numpy() + model.variables["baseline/biases"].numpy()
    np.testing.assert_allclose(model(frames, num_frames).numpy(), 1 / (1 + np.exp(-logits)), rtol=1e-5)


# --- NeXtVLAD ---------------------------------------------------------------------------------

def _bias_and_batch_norm(config: ModelConfig) -> int:
    """What the paper's formula leaves out: FC biases and 4 floats a batch-norm channel."""
    lam, h, r = config.expansion, config.hidden_size, config.gating_reduction
    total = 0
    for n, k, g in ((config.rgb_size, config.cluster_size, config.groups),
                    (config.audio_size, config.cluster_size // 2, config.groups // 2)):
        total += lam * n + g + 4 * g * k + 4 * k * lam * n // g  # expansion, attention biases; cluster, vlad BN
    return total + 4 * h + 4 * (h // r)                          # hidden1 BN, SE gating BN


@pytest.mark.parametrize("name", ["NX-K128-H2048", "NX-K112-H2048-R16", "NX-K16-H256-G4-E3-R4", "NX-K8-H64-MoE"])
def test_nextvlad_parameters_follow_the_papers_formula_from_the_built_variables(name):
    config = ModelConfig.from_name(name, num_classes=3862)
    built = sum(int(np.prod(v.shape)) for v in create_variables(config, zeros=True).values())
    assert built == num_parameters(config)
    if config.classifier == "logistic":
        # λN(N + G + K(G + (H+1)/G)) per modality + SE gating + (H+1)V, plus biases and batch norm
        assert built == formula_parameters(config) + _bias_and_batch_norm(config)
        if config.hidden_size == 2048:  # the reference settings: the formula is within 0.2%
            assert 0 < built - formula_parameters(config) < 0.002 * built


def test_nextvlad_reference_sizes():
    assert num_parameters(ModelConfig.from_name("NX-K128-H2048")) == 88_970_274
    final = num_parameters(ModelConfig.from_name("NX-K112-H2048-R16"))
    assert final == 78_714_274 and round(final / 1e6) == 79  # the slides' 79M
    shapes = {spec.name: spec.shape for spec in variable_specs(ModelConfig.from_name("NX-K128-H2048"))}
    assert shapes["tower/video_NeXtVLAD/cluster_weights"] == (2048, 8 * 128)
    assert shapes["tower/audio_NeXtVLAD/cluster_weights"] == (256, 4 * 64)  # K/2 clusters, G/2 groups
    assert shapes["tower/hidden1_weights"] == (128 * 256 + 64 * 64, 2048)
    assert shapes["tower/gating_weights_1"] == (2048, 256) and shapes["tower/logistic/weights"] == (2048, 3862)


@pytest.mark.parametrize("name, fields", [
    ("K32-H1024", dict(family="gated_netvlad", cluster_size=32, hidden_size=1024)),
    ("NX-K128-H2048", dict(family="nextvlad", cluster_size=128, groups=8, expansion=2, gating_reduction=8)),
    ("NX-K112-H2048-R16", dict(family="nextvlad", cluster_size=112, gating_reduction=16)),
    ("NX-K64-H1024-G4-E3", dict(groups=4, expansion=3, gating_reduction=8)),
    ("NX-K8-H64-MoE", dict(classifier="moe")),
])
def test_names_parse_in_one_place_and_round_trip(name, fields, tmp_path):
    config = ModelConfig.from_name(name, num_classes=20)
    assert config.name == name
    assert {key: getattr(config, key) for key in fields} == fields
    assert ModelConfig.from_json(config.to_json()) == config  # model.json rebuilds either family
    assert ModelConfig.from_name("NX-K128-H2048-G8-E2-R8").name == "NX-K128-H2048"  # defaults left out


@pytest.mark.parametrize("name, message", [
    ("NX-K128", "neither"), ("NX-K128-H2048-R16-G4", "neither"), ("K32-H1024-G4", "neither"),
    ("NX-K128-H2050-R16", "not divisible by gating_reduction"), ("NX-K128-H2048-G3", "groups must be even"),
    ("NX-K128-H2048-G0", "groups must be a positive integer"),
])
def test_bad_names_are_refused_plainly(name, message):
    with pytest.raises(ConfigError, match=message):
        ModelConfig.from_name(name)


def test_model_json_written_before_family_still_loads():
    legacy = {key: value for key, value in TINY.to_dict().items()
              if key not in ("family", "groups", "expansion", "gating_reduction", "dropout", "classifier")}
    assert ModelConfig.from_dict({**legacy, "model": "baseline"}) == TINY.replace(family="baseline")


def test_nextvlad_fp16_stores_the_big_tensors_as_float16_and_predicts_within_1e_3():
    config = ModelConfig.from_name("NX-K4-H16", num_classes=20)
    fp32 = build(config, seed=2)
    assert isinstance(fp32, NeXtVLAD)
    config16 = config.replace(fp16=True)
    variables = create_variables(config16, zeros=True)
    for name, variable in variables.items():
        assert variable.dtype == (tf.float16 if name in half_tensors(config16) else tf.float32), name
        variable.assign(tf.cast(fp32.variables[name], variable.dtype))
    frames, num_frames = _inputs()
    np.testing.assert_allclose(from_variables(config16, variables)(frames, num_frames).numpy(),
                               fp32(frames, num_frames).numpy(), atol=1e-3)
    big = ModelConfig.from_name("NX-K128-H2048")
    assert size_mib(big, fp16=True) < 0.51 * size_mib(big)  # the half tensors are ~99% of the model
