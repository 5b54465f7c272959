"""MLflow a user can use: artifacts a user elsewhere can open, the ensemble in the Model Registry."""
from __future__ import annotations

from pathlib import Path

from raytrain8m.records import tracking


def _store(tmp_path: Path, monkeypatch) -> str:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "test-tracking")
    return uri


def _export(tmp_path: Path) -> Path:
    export = tmp_path / "ensemble"
    (export / "inference_model").mkdir(parents=True, exist_ok=True)
    (export / "inference_model" / "inference_model.meta").write_bytes(b"meta")
    (export / "ensemble.json").write_text('{"num_classes": 3}')
    return export


def test_an_exported_ensemble_is_logged_and_registered_with_its_tags(tmp_path, monkeypatch):
    uri = _store(tmp_path, monkeypatch)
    tags = {"members": "K16-H32 (A),K8-H32 (B)", "weights": "0.6700,0.3300", "sizes_mib": "1.280,0.680",
            "size_mib": "1.960", "validate_gap": "0.7577"}
    versions = []
    for _ in range(2):  # a second export is a second version of the same registered model
        run_id = tracking.log_run("ensemble AB", {"members": "a,b"}, {"size_mib": 1.96}, tags={"stage": "ensemble"})
        versions.append(tracking.register_ensemble(run_id, _export(tmp_path), tags))
    assert versions == ["1", "2"]
    client = tracking.client(uri)
    version = client.get_model_version(tracking.ENSEMBLE_MODEL, "2")
    assert version.run_id == run_id and version.tags == tags
    assert {a.path for a in client.list_artifacts(run_id, "ensemble")} >= {"ensemble/ensemble.json",
                                                                          "ensemble/inference_model"}
    local = client.download_artifacts(run_id, "ensemble", str(tmp_path / "download"))
    assert (Path(local) / "inference_model" / "inference_model.meta").read_bytes() == b"meta"
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["registered_model"] == f"{tracking.ENSEMBLE_MODEL}/2"


def test_a_models_chosen_checkpoint_is_an_artifact_of_its_train_run(tmp_path, monkeypatch):
    uri = _store(tmp_path, monkeypatch)
    checkpoint = tmp_path / "averaged" / "K4-H16"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.json").write_text("{}")
    run = tracking.start_run("K4-H16")
    tracking.log_chosen_checkpoint(run.run_id, checkpoint, "averaged")
    client = tracking.client(uri)
    assert [a.path for a in client.list_artifacts(run.run_id, "chosen_checkpoint")] == ["chosen_checkpoint/model.json"]
    assert client.get_run(run.run_id).data.tags["chosen_checkpoint/kind"] == "averaged"
