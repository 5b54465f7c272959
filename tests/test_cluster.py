"""cluster/*.yaml against Ray's own autoscaler schema, and the user flow on a real cluster.

The slow tests start a two-node Ray cluster on this machine with the `ray` CLI (a CPU head
and a worker labelled gpu-type=T4, each in its own temp dir and on free ports, so they do
not meet any other Ray), a real `mlflow server` on 127.0.0.1, and submit jobs through
`ray job submit --working-dir .` exactly as cluster/README.md tells users to.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from raytrain8m.runtime.gpus import GPU_PROFILES, GPU_TYPE_LABEL

REPO = Path(__file__).resolve().parents[1]
CLUSTER_FILES = {"gcp": REPO / "cluster" / "gcp.yaml", "onprem": REPO / "cluster" / "onprem.yaml"}
VENV_BIN = Path(sys.executable).parent
# What `--working-dir .` must not upload (Ray also honours .gitignore; this says it twice).
UPLOAD_EXCLUDES = [".venv", ".git", "data", "runs", "mlruns", "mlflow.db", "**/__pycache__"]
# Ray token authentication, as cluster/*.yaml enable it; our own token, so that a
# ~/.ray/auth_token left by any other Ray on this machine changes nothing.
RAY_TOKEN = secrets.token_hex(32)


def _load(name: str) -> dict:
    return yaml.safe_load(CLUSTER_FILES[name].read_text())


def _commands(config: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_setup_commands",
            "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")
    return [command for key in keys for command in config.get(key, [])]


def _gpu_types(config: dict) -> set[str]:
    """Every gpu-type a file can give a node: per-type labels, or (on-prem) the nvidia-smi map."""
    types = {node["labels"][GPU_TYPE_LABEL] for node in config.get("available_node_types", {}).values()
             if GPU_TYPE_LABEL in node.get("labels", {})}
    for command in _commands(config):
        types |= set(re.findall(rf"{GPU_TYPE_LABEL}[=:]\s*([\w.-]+)", command))
        types |= set(re.findall(r"\)\s*echo\s+([\w.-]+)\s*;;", command)) - {"none"}
    return types


# ---------------------------------------------------------------- the YAML files


@pytest.mark.parametrize("name", sorted(CLUSTER_FILES))
def test_cluster_yaml_passes_ray_autoscaler_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(_load(name)))  # raises jsonschema.ValidationError


@pytest.mark.parametrize("name", sorted(CLUSTER_FILES))
def test_every_gpu_type_label_has_a_profile(name):
    types = _gpu_types(_load(name))
    assert types, f"{name}.yaml gives no node a {GPU_TYPE_LABEL} label"
    assert types <= set(GPU_PROFILES), f"no GpuProfile for {types - set(GPU_PROFILES)}"
    assert "K80" not in types, "K80 is retired on GCP and unsupported by CUDA 12 TensorFlow"


def test_gcp_gpu_node_types_are_labelled_and_cover_two_gpu_models():
    config = _load("gcp")
    gpu_nodes = {key: node for key, node in config["available_node_types"].items()
                 if node["resources"].get("GPU", 0) > 0}
    for key, node in gpu_nodes.items():
        assert GPU_TYPE_LABEL in node.get("labels", {}), f"{key} has a GPU but no {GPU_TYPE_LABEL}"
        assert node["node_config"]["scheduling"]["onHostMaintenance"] == "TERMINATE", key
        image = node["node_config"]["disks"][0]["initializeParams"]["sourceImage"]
        assert "deeplearning-platform-release" in image, f"{key}: no NVIDIA driver in {image}"
    pooled = {node["labels"][GPU_TYPE_LABEL] for node in gpu_nodes.values() if node["max_workers"] > 0}
    assert len(pooled) >= 2, f"GPU models with nodes: {pooled}"
    assert config["metadata"]["mlflow_artifacts"].startswith("gs://")


@pytest.mark.parametrize("name", sorted(CLUSTER_FILES))
def test_head_services_do_not_bind_all_interfaces(name):
    config = _load(name)
    head = " ".join(config["head_start_ray_commands"])
    assert not re.search(r"0\.0\.0\.0|host[= ]::(?!1)", head), "a head service binds all interfaces"
    assert "--dashboard-host=127.0.0.1" in head
    assert re.search(r"mlflow server.*--host \$\(hostname -I", head), "MLflow must bind the internal address"


@pytest.mark.parametrize("name", sorted(CLUSTER_FILES))
def test_every_ray_start_uses_token_auth_with_the_token_kept_out_of_the_file(name):
    config = _load(name)
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [command for command in config[key] if "ray start" in command]
        assert starts and all("RAY_AUTH_MODE=token" in command for command in starts), key
    assert config["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"
    assert "RAY_AUTH_TOKEN=" not in CLUSTER_FILES[name].read_text()


# ---------------------------------------------------------------- a real cluster


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get_json(url: str):
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {RAY_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def _wait_for(what: str, check, timeout_s: float, processes=()):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"{what}: {process.args[:3]} exited with {process.returncode}")
        try:
            if check():
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout_s}s")


def _env() -> dict:
    env = dict(os.environ, PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
               RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=RAY_TOKEN,
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # teardown: no 30 s drain per node
               # Ray gives its dashboard 60 s to come up, which a 2-core machine under load (load
               # average 10: a demo beside the suite) once missed; the head then exits with 1.
               RAY_DASHBOARD_STARTUP_TIMEOUT_S="240")
    env.pop("RAY_ADDRESS", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process we started (`ray start --block` then stops its own node; signalling
    its whole group instead kills the GCS first and stalls the shutdown), then SIGKILL
    whatever is left of its process group."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


class RayCluster:
    def __init__(self, dashboard_url: str, processes: list[subprocess.Popen]):
        self.dashboard_url = dashboard_url
        self.processes = processes


@pytest.fixture(scope="module")
def ray_cluster():
    """A CPU head and a second node labelled gpu-type=T4, started with the `ray` CLI."""
    root = Path(tempfile.mkdtemp(prefix="rt8m-", dir="/tmp"))  # short: Unix socket paths
    gcs_port, dashboard_port = _free_port(), _free_port()
    common = ["--block", "--disable-usage-stats", "--object-store-memory", str(300 * 2**20),
              "--min-worker-port", "0", "--max-worker-port", "0"]
    head = [str(VENV_BIN / "ray"), "start", "--head", "--port", str(gcs_port), "--num-cpus", "1",
            "--num-gpus", "0", "--include-dashboard=true", "--dashboard-host", "127.0.0.1",
            "--dashboard-port", str(dashboard_port),
            "--dashboard-agent-listen-port", str(_free_port()),
            "--ray-client-server-port", str(_free_port()), "--temp-dir", str(root / "head"), *common]
    # Two logical CPUs on the "T4" node: a Tune trial holds its Train controller and a worker.
    worker = [str(VENV_BIN / "ray"), "start", "--address", f"127.0.0.1:{gcs_port}",
              "--num-cpus", "2", "--num-gpus", "0", f"--labels={GPU_TYPE_LABEL}=T4",
              "--dashboard-agent-listen-port", str(_free_port()),
              "--temp-dir", str(root / "worker"), *common]
    dashboard_url = f"http://127.0.0.1:{dashboard_port}"
    processes: list[subprocess.Popen] = []
    try:
        for name, command in (("head", head), ("worker", worker)):
            log = open(root / f"{name}.log", "w")
            processes.append(subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                                              cwd=root, start_new_session=True))
            if command is head:
                _wait_for("ray head", lambda: _get_json(f"{dashboard_url}/api/version"), 300, processes)

        def two_nodes_alive():
            nodes = _get_json(f"{dashboard_url}/api/v0/nodes")["data"]["result"]["result"]
            return sum(node["state"] == "ALIVE" for node in nodes) == 2

        _wait_for("second ray node", two_nodes_alive, 300, processes)
        yield RayCluster(dashboard_url, processes)
    except BaseException:
        for log in sorted(root.glob("*.log")):
            print(f"---- {log.name}\n{log.read_text()[-4000:]}", file=sys.stderr)
        raise
    finally:
        for process in reversed(processes):
            _stop(process)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server on 127.0.0.1, SQLite backend, local artifacts."""
    root = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    command = [str(VENV_BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
               "--artifacts-destination", str(root / "artifacts")]
    log = open(root / "server.log", "w")
    process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT, cwd=root,
                               start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        _wait_for("mlflow server", lambda: urllib.request.urlopen(f"{uri}/health", timeout=5).status == 200,
                  120, [process])
        yield uri
    except BaseException:
        print((root / "server.log").read_text()[-4000:], file=sys.stderr)
        raise
    finally:
        _stop(process)


def _submit(cluster: RayCluster, tracking_uri: str, entrypoint: list[str], timeout_s: int,
            extra_env: dict | None = None) -> str:
    """`ray job submit --working-dir .` as a user would; returns the job's log, fails if it failed."""
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": tracking_uri, **(extra_env or {})},
                   "excludes": UPLOAD_EXCLUDES}
    command = [str(VENV_BIN / "ray"), "job", "submit", "--address", cluster.dashboard_url,
               "--working-dir", ".", "--runtime-env-json", json.dumps(runtime_env), "--", *entrypoint]
    result = subprocess.run(command, cwd=REPO, env=_env(), capture_output=True, text=True,
                            timeout=timeout_s)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"job failed ({result.returncode}):\n{output[-6000:]}"
    assert "succeeded" in output, output[-6000:]
    return output


PROBE_JOB = """
import json, os, mlflow, ray
ray.init()
alive = [node for node in ray.nodes() if node["Alive"]]
gpu_types = sorted(node["Labels"].get("gpu-type", "") for node in alive)

@ray.remote(num_cpus=1, label_selector={"gpu-type": "T4"})
def node_labels():
    return ray.get_runtime_context().get_node_labels()

placed_on = ray.get(node_labels.remote()).get("gpu-type")
mlflow.set_experiment("cluster-probe")
with mlflow.start_run(run_name="probe"):
    mlflow.log_param("gpu_types", ",".join(gpu_types))
    mlflow.log_param("placed_on", placed_on)
    mlflow.log_metric("nodes", len(alive))
print("PROBE", json.dumps({"gpu_types": gpu_types, "placed_on": placed_on,
                           "venv": os.path.exists(".venv"), "data": os.path.exists("data")}))
"""


@pytest.mark.slow
def test_job_submitted_to_cluster_sees_gpu_type_label_and_logs_to_mlflow_server(ray_cluster, mlflow_server):
    import mlflow

    with pytest.raises(urllib.error.HTTPError) as refused:  # token auth is on
        urllib.request.urlopen(f"{ray_cluster.dashboard_url}/api/v0/nodes", timeout=5)
    assert refused.value.code in (401, 403)

    output = _submit(ray_cluster, mlflow_server, ["python", "-c", PROBE_JOB], timeout_s=300)
    probe = json.loads(re.search(r"^PROBE (.*)$", output, re.MULTILINE).group(1))
    assert probe == {"gpu_types": ["", "T4"], "placed_on": "T4", "venv": False, "data": False}

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("cluster-probe")
    runs = client.search_runs([experiment.experiment_id])
    assert [run.data.params["placed_on"] for run in runs] == ["T4"]
    assert runs[0].data.metrics["nodes"] == 2


@pytest.fixture(scope="module")
def t4_batch_data(tmp_path_factory) -> Path:
    """Synthetic data with a full batch for a T4: the sweep gives a `gpu-type=T4` node batch
    160 (raytrain8m.sweep.placement), more train videos than conftest's shared set holds."""
    from raytrain8m.data.synthetic import generate

    out = tmp_path_factory.mktemp("t4-batch-data")
    generate(str(out), videos=200, classes=20, max_frames=12, shards=2, seed=0,
             validate_fraction=0.1, test_fraction=0.05, progress=False)
    return out


@pytest.mark.slow
def test_sweep_job_on_two_node_cluster_writes_runs_to_mlflow_server(ray_cluster, mlflow_server, request,
                                                                    tmp_path):
    import mlflow

    if not (REPO / "jobs" / "sweep.py").exists():
        pytest.skip("jobs/sweep.py not written yet")
    data = request.getfixturevalue("t4_batch_data")
    out = tmp_path / "sweep"  # one machine: a local path is shared storage for both nodes
    _submit(ray_cluster, mlflow_server,
            ["python", "jobs/sweep.py", "--grid", "K4-H16", "--classes", "20",  # one trial: a minute of CPU
             "--train-data", str(data / "train*.tfrecord"),
             "--validate-data", str(data / "validate*.tfrecord"),
             "--out", str(out), "--max-steps", "4", "--checkpoint-every", "2",
             "--workers-per-trial", "1", "--max-failures", "0", "--smoke"],
            timeout_s=900, extra_env={"MLFLOW_EXPERIMENT_NAME": "cluster-sweep"})

    client = mlflow.MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("cluster-sweep")
    assert experiment is not None, "the sweep wrote nothing to the MLflow server"
    runs = client.search_runs([experiment.experiment_id])
    measured = [run for run in runs if run.data.metrics]
    assert [run.info.run_name for run in measured if run.info.run_name == "K4-H16"], \
        f"no measured MLflow run of the grid's cell: {[(r.info.run_name, r.data.tags) for r in runs]}"
    trial = next(run for run in measured if run.info.run_name == "K4-H16")
    assert trial.data.params["gpu_type"] == "T4"  # placed by the node's label
