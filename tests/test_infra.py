"""The cluster side: infra/cluster.yaml, its simulated twin, token auth, and autoscaling.

Static tests read the YAML files (no network, no cloud account). The
integration tests start a head node with Ray's fake multi-node autoscaler on
127.0.0.1 (see tests/infra_helpers.py) and submit jobs to it with
``ray job submit``, and run the MLflow server exactly as infra/README.md
documents it, against moto's S3.
"""

from __future__ import annotations

import copy
import math
import os
import re
import sys
from pathlib import Path

import jsonschema
import pytest
import requests

from tests.media import folder_subset
from tests.infra_helpers import (
    CLUSTER_YAML,
    FAKE_CLUSTER_YAML,
    INFRA,
    custom_resources,
    documented_command,
    end_process_tree,
    free_ports,
    image_ray_version,
    load_yaml,
    pinned_versions,
    pip_installs,
    popen_logged,
    replace_option,
    run_placement_job,
    start_fake_cluster,
    uncommented_keys,
    validate_cluster_config,
    wait_for,
)
from raydf.config import ExtractConfig, TrainConfig, load_config

README = INFRA / "README.md"
EXTRACT_AWS = INFRA / "configs" / "extract-aws.yaml"
TRAIN_AWS = INFRA / "configs" / "train-aws.yaml"
EXTRACT_FAKE = INFRA / "local" / "extract-fake.yaml"
REPO = INFRA.parent

# Node types of cluster.yaml by role.
HEAD = "ray.head.default"
CPU_TYPE = "cpu_worker"
GPU_TYPES = {"v100_x1": ("p3.2xlarge", 1), "v100_x4": ("p3.8xlarge", 4)}


@pytest.fixture(scope="module")
def aws() -> dict:
    return load_yaml(CLUSTER_YAML)


@pytest.fixture(scope="module")
def fake() -> dict:
    return load_yaml(FAKE_CLUSTER_YAML)


def _all_setup_commands(cfg: dict) -> list[str]:
    cmds = [*cfg.get("setup_commands", []), *cfg.get("head_setup_commands", []), *cfg.get("worker_setup_commands", [])]
    for node_type in cfg["available_node_types"].values():
        cmds += node_type.get("worker_setup_commands", [])
    return cmds


# --------------------------------------------------------------------------- schema


def test_cluster_yaml_validates_against_ray_schema(aws):
    prepared = validate_cluster_config(aws)
    assert set(prepared["available_node_types"]) == {HEAD, CPU_TYPE, *GPU_TYPES}


def _drop_provider(c):
    del c["provider"]


def _max_workers_as_text(c):
    c["max_workers"] = "ten"


def _fractional_gpu_count(c):
    c["available_node_types"]["v100_x1"]["resources"]["GPU"] = "1"


def _typo_in_node_type(c):
    c["available_node_types"]["v100_x4"]["max_worker"] = 2


def _unknown_provider(c):
    c["provider"]["type"] = "aws-typo"


def _head_not_a_node_type(c):
    c["head_node_type"] = "head"


@pytest.mark.parametrize(
    ("breakage", "error", "message"),
    [
        (_drop_provider, KeyError, "provider"),
        (_max_workers_as_text, jsonschema.ValidationError, "is not of type 'integer'"),
        (_fractional_gpu_count, jsonschema.ValidationError, "is not of type 'integer'"),
        (_typo_in_node_type, jsonschema.ValidationError, "'max_worker' was unexpected"),
        (_unknown_provider, NotImplementedError, "Unsupported node provider"),
        (_head_not_a_node_type, ValueError, "head_node_type"),
    ],
)
def test_broken_cluster_yaml_is_rejected(aws, breakage, error, message):
    broken = copy.deepcopy(aws)
    breakage(broken)
    with pytest.raises(error, match=re.escape(message)):
        validate_cluster_config(broken)


def test_fake_cluster_yaml_validates_against_ray_schema(fake):
    # prepare_config() cannot fill fake_multinode defaults: the 2.60 wheel lacks
    # their example.yaml. So the file carries every key and is validated raw.
    from ray.autoscaler._private.util import validate_config

    validate_config(fake)
    assert fake["provider"]["type"] == "fake_multinode"


@pytest.mark.parametrize("path", [CLUSTER_YAML, FAKE_CLUSTER_YAML], ids=["aws", "fake"])
def test_every_cluster_yaml_key_is_commented(path):
    assert uncommented_keys(path) == []


# --------------------------------------------------------------------------- image and torch


def test_ray_image_matches_pyproject_pin(aws):
    version, python, flavour = image_ray_version(aws["docker"]["image"])
    assert version == pinned_versions()["ray"]
    assert (python, flavour) == ("py311", "gpu")
    # No per-role image may drift from the pinned one.
    for key in ("head_image", "worker_image"):
        assert aws["docker"].get(key, aws["docker"]["image"]) == aws["docker"]["image"]


def test_cluster_installs_cuda12_torch_matching_pins(aws):
    pins = pinned_versions()
    installs = pip_installs(_all_setup_commands(aws))
    torch_installs = [i for i in installs if {"torch", "torchvision"} & set(i.pins)]
    assert torch_installs, "no pip install of torch in the setup commands"
    for install in torch_installs:
        # CUDA 12.x wheels from PyTorch's index: PyPI's default torch wheels are CUDA 13 (no Volta).
        # --index-url, not --extra-index-url: with both indexes pip could pick PyPI's CUDA 13 build.
        assert re.search(r"--index-url[ =]https://download\.pytorch\.org/whl/cu12\d\b", install.command), install.command
        assert install.pins.get("torch") == pins["torch"], install.command
        assert install.pins.get("torchvision") == pins["torchvision"], install.command
    # torch must be in place before raydf is installed, so pip keeps the CUDA 12 build.
    raydf = [n for n, i in enumerate(installs) if "/home/ray/raydf" in i.command]
    first_torch = installs.index(torch_installs[0])
    assert raydf and first_torch < raydf[0]
    # And the node checks the result instead of trusting pip.
    assert any("torch.version.cuda" in c and "'12.'" in c for c in aws["setup_commands"])


# --------------------------------------------------------------------------- node types and placement


def test_head_advertises_no_gpu_and_no_stage_resources(aws, fake):
    for cfg in (aws, fake):
        head = cfg["available_node_types"][cfg["head_node_type"]]
        assert head["resources"].get("GPU", 0) == 0
        assert custom_resources(head) == {}
        assert head.get("max_workers", 0) == 0
    # On AWS the head takes no tasks at all.
    assert aws["available_node_types"][HEAD]["resources"]["CPU"] == 0


def test_v100_node_types_have_bounds_and_idle_timeout(aws):
    types = aws["available_node_types"]
    for name, (instance, gpus) in GPU_TYPES.items():
        spec = types[name]
        assert spec["node_config"]["InstanceType"] == instance
        assert spec["resources"]["GPU"] == gpus
        assert 0 <= spec["min_workers"] <= spec["max_workers"]
        assert 0 < spec["idle_timeout_s"] <= 60 * aws["idle_timeout_minutes"]
    assert types[CPU_TYPE]["resources"].get("GPU", 0) == 0


@pytest.mark.parametrize(
    ("cluster_path", "extract_path"),
    [(CLUSTER_YAML, EXTRACT_AWS), (FAKE_CLUSTER_YAML, EXTRACT_FAKE)],
    ids=["aws", "fake"],
)
def test_stage_resources_select_the_right_node_types(cluster_path, extract_path):
    cluster = load_yaml(cluster_path)
    cfg = load_config(ExtractConfig, extract_path)
    types = cluster["available_node_types"]
    workers = {k: v for k, v in types.items() if k != cluster["head_node_type"]}

    def hosts(request: dict[str, float], cpus: float, gpus: float) -> dict[str, int]:
        """Node types that can host such an actor, with how many fit on one node."""
        fit = {}
        for name, spec in workers.items():
            res = spec["resources"]
            if not all(res.get(k, 0) >= v for k, v in request.items()):
                continue
            n = min([math.floor(res.get(k, 0) / v) for k, v in request.items()] + [math.floor(res.get("CPU", 0) / cpus)])
            if gpus:
                n = min(n, math.floor(res.get("GPU", 0) / gpus))
            if n >= 1:
                fit[name] = n
        return fit

    assert cfg.crop_resources and cfg.feature_resources, "stages must ask for custom resources"
    crop_hosts = hosts(cfg.crop_resources, cfg.cpus_per_crop_actor, 0)
    feature_hosts = hosts(cfg.feature_resources, cfg.cpus_per_feature_actor, cfg.gpus_per_feature_actor)
    assert set(crop_hosts) == {CPU_TYPE}
    assert feature_hosts and all(types[t]["resources"].get("GPU", 0) >= 1 for t in feature_hosts)
    assert set(feature_hosts) <= set(GPU_TYPES)
    # The configured maximum pool sizes fit when every type is at max_workers.
    assert cfg.crop_actors[1] <= sum(n * workers[t]["max_workers"] for t, n in crop_hosts.items())
    assert cfg.feature_actors[1] <= sum(n * workers[t]["max_workers"] for t, n in feature_hosts.items())
    if cluster_path == CLUSTER_YAML:
        assert cfg.half_precision  # fp16 on V100 (no bf16 on Volta)


def test_fake_cluster_mirrors_aws_node_types(aws, fake):
    assert fake["head_node_type"] == aws["head_node_type"]
    fake_workers = {k: v for k, v in fake["available_node_types"].items() if k != fake["head_node_type"]}
    assert CPU_TYPE in fake_workers and set(fake_workers) & set(GPU_TYPES)
    for name, spec in fake_workers.items():
        mirror = aws["available_node_types"][name]
        assert set(custom_resources(spec)) == set(custom_resources(mirror)), name
        assert (spec["resources"].get("GPU", 0) > 0) == (mirror["resources"].get("GPU", 0) > 0), name
        assert spec.get("min_workers", 0) == 0  # the simulation must show scaling from zero
    # Few CPUs per fake node: the simulation runs on 2 cores.
    assert all(spec["resources"]["CPU"] <= 1 for spec in fake["available_node_types"].values())
    assert fake["idle_timeout_minutes"] <= 0.5


def test_train_config_fits_the_gpu_node_types(aws):
    cfg = load_config(TrainConfig, TRAIN_AWS)
    types = aws["available_node_types"]
    gpus_at_max = sum(types[t]["resources"]["GPU"] * types[t]["max_workers"] for t in GPU_TYPES)
    assert cfg.use_gpu and 1 <= cfg.num_workers <= gpus_at_max
    assert cfg.cpus_per_worker <= min(types[t]["resources"]["CPU"] / types[t]["resources"]["GPU"] for t in GPU_TYPES)


# --------------------------------------------------------------------------- security


def test_token_auth_on_and_dashboard_on_loopback(aws):
    head_start = " ".join(aws["head_start_ray_commands"])
    worker_start = " ".join(aws["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token ray start --head" in head_start
    assert "RAY_AUTH_MODE=token ray start --address" in worker_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "0.0.0.0" not in head_start + worker_start
    # The token reaches every node at Ray's default token path, readable by its owner only.
    assert aws["file_mounts"]["/home/ray/.ray/auth_token"] == "~/.ray/auth_token"
    assert "chmod 600 /home/ray/.ray/auth_token" in aws["setup_commands"]
    # No extra inbound rule (e.g. for 8265) on top of Ray's SSH + intra-cluster defaults.
    assert "IpPermissions" not in aws["provider"].get("security_group", {})


def test_head_and_workers_have_s3_instance_profiles(aws):
    for name, spec in aws["available_node_types"].items():
        arn = spec["node_config"]["IamInstanceProfile"]["Arn"]
        role = "raydf-head" if name == HEAD else "raydf-worker"
        assert re.fullmatch(rf"arn:aws:iam::[^:]+:instance-profile/{role}", arn), (name, arn)
        assert spec["node_config"]["MetadataOptions"]["HttpTokens"] == "required"


def test_placeholders_in_cluster_yaml_are_explained_in_readme():
    placeholders = set(re.findall(r"<[A-Z][A-Z0-9_]*>", CLUSTER_YAML.read_text()))
    readme = README.read_text()
    assert placeholders, "expected <PLACEHOLDERS> for the AMI and the account id"
    assert {p for p in placeholders if p not in readme} == set()


def test_readme_covers_the_operator_workflow():
    readme = README.read_text()
    for pipeline in ("extract", "train", "tune"):
        assert re.search(rf"ray job submit [^\n]*--working-dir \. [^\n]*-- python pipelines/{pipeline}\.py", readme), pipeline
    for must in (
        "ray up infra/cluster.yaml",
        "ray down infra/cluster.yaml",
        "ray dashboard infra/cluster.yaml",
        "MLFLOW_TRACKING_URI",
        "--artifacts-destination s3://",
        "--workers 1",
        "benchmarks/RESULTS.md",
    ):
        assert must in readme, must


# --------------------------------------------------------------------------- simulated cluster


@pytest.fixture(scope="module")
def fake_cluster():
    cluster = start_fake_cluster(FAKE_CLUSTER_YAML)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_job_submit_requires_the_token(fake_cluster):
    marker = "raydf-auth-ok"
    entry = ["python", "-c", f"print('{marker}')"]

    refused = fake_cluster.submit(None, entrypoint=entry, authorised=False, timeout=120)
    assert refused.returncode != 0
    assert "Missing authentication token" in refused.stdout + refused.stderr

    wrong = fake_cluster.submit(None, entrypoint=entry, env={"RAY_AUTH_TOKEN": "not-the-token"}, timeout=120)
    wrong_out = wrong.stdout + wrong.stderr
    assert wrong.returncode != 0 and "Invalid authentication token" in wrong_out

    url = f"{fake_cluster.dashboard_url}/api/jobs/"
    assert requests.get(url, timeout=10).status_code == 401
    assert requests.get(url, headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 403
    assert requests.get(url, headers=fake_cluster.headers, timeout=10).status_code == 200

    accepted = fake_cluster.submit(None, entrypoint=entry, timeout=180)
    assert accepted.returncode == 0, accepted.stdout[-3000:] + accepted.stderr[-3000:]
    assert marker in accepted.stdout
    # Exactly one job reached the cluster: the refused ones never got there.
    jobs = [j for j in fake_cluster.jobs().list_jobs() if marker in (j.entrypoint or "")]
    assert [j.status.value for j in jobs] == ["SUCCEEDED"]


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_extraction_job_scales_gpu_workers_up_on_demand_and_back_to_zero(fake_cluster, generated_dataset, tmp_path):
    """pipelines/extract.py itself, submitted to a head-only cluster, with the placement config."""
    import pyarrow.parquet as pq

    from raydf.datasets import build_manifest

    # Start from a head-only cluster (an earlier test's workers must have gone).
    wait_for(lambda: not fake_cluster.alive_workers(), timeout=90, what="no worker nodes before the job")
    data = folder_subset(generated_dataset, tmp_path / "videos")  # two real, two fake: placement, not throughput, is under test
    out = tmp_path / "features"
    run = run_placement_job(
        fake_cluster,
        REPO / "pipelines" / "extract.py",
        "--input", str(data), "--output", str(out), "--layout", "folders",
        "--config", str(EXTRACT_FAKE.relative_to(REPO)),
        "--style-config", "psp_tiny", "--frames", "8", "--no-track",
        working_dir=REPO,
        stages=("CropStage", "FeatureStage"),
        job_timeout=360,
    )  # fmt: skip
    print(
        f"\n[infra timings] submit {run.submit_s:.1f}s; first node up after submit: "
        + ", ".join(f"{t} {s:.1f}s" for t, s in sorted(run.first_seen_s.items()))
        + f"; job done {run.job_s:.1f}s; scale-down to zero {run.scale_down_s:.1f}s after job end"
    )

    assert run.status == "SUCCEEDED", run.logs[-3000:]
    # GPU-type (and CPU-type) workers were launched on demand, from zero.
    assert "v100_x1" in run.first_seen_s and CPU_TYPE in run.first_seen_s
    # Every crop actor ran on a CPU worker, every feature actor on a GPU worker, none on the head.
    assert run.stage_nodes["CropStage"] and set(run.stage_nodes["CropStage"]) == {CPU_TYPE}
    assert run.stage_nodes["FeatureStage"] and set(run.stage_nodes["FeatureStage"]) == {"v100_x1"}
    # The job did its work: one ok row per video.
    assert "status: ok" in run.logs
    table = pq.read_table(out, columns=["video_id", "status"])
    assert sorted(table.column("video_id").to_pylist()) == sorted(build_manifest(str(data), layout="folders").column("video_id").to_pylist())
    assert set(table.column("status").to_pylist()) == {"ok"}
    # Idle workers went away (run_placement_job raised otherwise), none is left.
    assert run.scale_down_s is not None and fake_cluster.alive_workers() == {}


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_local_head_takes_in_process_and_subprocess_drivers_on_loopback(ray_cluster, s3):
    """The session cluster (tests/conftest.py): this process is its driver, subprocesses join with the token."""
    import subprocess

    import ray

    assert ray.is_initialized()

    @ray.remote(num_cpus=1)
    def where():
        return os.environ.get("AWS_ENDPOINT_URL"), ray.util.get_node_ip_address()

    # The cluster's environment (extra_env) reaches the workers, and everything is on loopback.
    assert ray.get(where.remote()) == (s3.url, "127.0.0.1")

    code = "import ray; ray.init(); print('CPUS', ray.cluster_resources()['CPU'])"
    driver = subprocess.run([sys.executable, "-c", code], env=ray_cluster.driver_env(), capture_output=True, text=True, timeout=120)
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert "CPUS 2.0" in driver.stdout
    # Without the token the same driver is turned away.
    stranger = {k: v for k, v in ray_cluster.driver_env().items() if not k.startswith("RAY_AUTH")}
    stranger["HOME"] = str(ray_cluster.root / "stranger")
    Path(stranger["HOME"]).mkdir(exist_ok=True)
    refused = subprocess.run([sys.executable, "-c", code], env=stranger, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Authentication" in refused.stderr


# --------------------------------------------------------------------------- MLflow server


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_documented_mlflow_server_keeps_runs_in_sqlite_and_artifacts_in_s3(tmp_path):
    import boto3
    from mlflow import MlflowClient

    argv = documented_command(README.read_text(), "mlflow server", "--host 127.0.0.1")
    assert argv[argv.index("--backend-store-uri") + 1].startswith("sqlite:////")  # absolute path
    assert argv[argv.index("--workers") + 1] == "1"
    assert argv[argv.index("--artifacts-destination") + 1].startswith("s3://")

    s3_port, mlflow_port = free_ports(2)
    s3_url = f"http://127.0.0.1:{s3_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLFLOW_"))}
    env.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=s3_url,  # moto stands in for S3
        MLFLOW_S3_ENDPOINT_URL=s3_url,
    )
    bin_dir = Path(sys.executable).parent
    argv = replace_option(argv, "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}")
    argv = replace_option(argv, "--artifacts-destination", argv[argv.index("--artifacts-destination") + 1].replace("<BUCKET>", "raydf"))
    argv = replace_option(argv, "--port", str(mlflow_port))
    argv[0] = str(bin_dir / "mlflow")

    procs = [popen_logged([str(bin_dir / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], tmp_path / "moto.log", env)]
    try:
        s3 = boto3.client("s3", endpoint_url=s3_url, aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1")

        def s3_up():
            try:
                return requests.get(s3_url, timeout=1).ok
            except requests.RequestException:
                return False

        wait_for(s3_up, timeout=30, what="moto S3")
        s3.create_bucket(Bucket="raydf")
        procs.append(popen_logged(argv, tmp_path / "mlflow.log", env))
        server = f"http://127.0.0.1:{mlflow_port}"

        def healthy():
            try:
                return requests.get(f"{server}/health", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_for(healthy, timeout=90, what="mlflow server /health")

        client = MlflowClient(tracking_uri=server)
        run = client.create_run(client.create_experiment("infra-smoke"))
        client.log_metric(run.info.run_id, "auc", 0.5)
        (tmp_path / "model-card.txt").write_text("raydf")
        client.log_artifact(run.info.run_id, str(tmp_path / "model-card.txt"))

        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied: clients need no S3 rights
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="raydf").get("Contents", [])]
        assert any(k.startswith("mlflow-artifacts/") and k.endswith(f"{run.info.run_id}/artifacts/model-card.txt") for k in keys), keys
        assert client.get_run(run.info.run_id).data.metrics == {"auc": 0.5}
        assert (tmp_path / "mlflow.db").stat().st_size > 0
    finally:
        for proc in reversed(procs):
            end_process_tree(proc)
