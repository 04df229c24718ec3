"""Test helpers for Ray clusters: cluster YAML parsing, a local head, a simulated autoscaling cluster.

:func:`start_cluster` starts a token-authenticated head on 127.0.0.1 (the
session cluster of tests/conftest.py); :func:`start_fake_cluster` adds Ray's
fake multi-node autoscaler driven by ``infra/local/fake_cluster.yaml``.
Everything they start is isolated from the machine's state and from other Ray
clusters running beside it:

* its own ``HOME``, auth token (``RAY_AUTH_TOKEN_PATH``) and ``--temp-dir``;
* free ports on 127.0.0.1 only (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes
  every node, the fake workers included, pick the loopback address);
* teardown ends exactly the processes this cluster started (those naming its
  temp dir or GCS address, and their children), by pid. ``ray stop`` is not
  used: it kills every Ray process on the machine, other sessions' too.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import psutil
import yaml

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
CLUSTER_YAML = INFRA / "cluster.yaml"
FAKE_CLUSTER_YAML = INFRA / "local" / "fake_cluster.yaml"
PYPROJECT = REPO / "pyproject.toml"

# Resource names Ray fills in itself; anything else a node type advertises is ours.
BUILTIN_RESOURCES = frozenset({"CPU", "GPU", "memory", "object_store_memory"})
PYTORCH_INDEX = re.compile(r"--(?:extra-)?index-url[ =](https://download\.pytorch\.org/whl/(cu\d+|cpu|rocm[\d.]+))")

_BIN = Path(sys.executable).parent
RAY_CLI = str(_BIN / "ray")
# Variables of the caller's shell that would point our subprocesses at another cluster or token.
_FOREIGN_ENV = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")


# --------------------------------------------------------------------------- YAML and pins


def load_yaml(path: Path) -> dict[str, Any]:
    """Parse a YAML mapping."""
    data = yaml.safe_load(Path(path).read_text())
    if not isinstance(data, dict):
        raise ValueError(f"{path} is not a YAML mapping")
    return data


def validate_cluster_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Fill Ray's provider defaults in and validate against ``ray-schema.json``; returns the prepared copy."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def pinned_versions(pyproject: Path = PYPROJECT) -> dict[str, str]:
    """``{distribution: version}`` for every ``name[extras]==version`` dependency of pyproject.toml."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(?:;.*)?", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def image_ray_version(image: str) -> tuple[str, str, str]:
    """``rayproject/ray:2.60.0-py311-gpu`` -> ``("2.60.0", "py311", "gpu")``."""
    m = re.fullmatch(r"rayproject/ray:(\d+\.\d+\.\d+)-(py\d+)-(\w+)", image)
    if not m:
        raise ValueError(f"not a rayproject/ray:<version>-py<NN>-<flavour> tag: {image!r}")
    return m.group(1), m.group(2), m.group(3)


@dataclass(frozen=True)
class PipInstall:
    """One ``pip install`` found in a setup command."""

    command: str
    pins: dict[str, str]  # {distribution: version} of its name==version arguments
    index_url: str | None  # PyTorch index, if any
    index_flavour: str | None  # "cu126", "cpu", ...


def pip_installs(commands: list[str]) -> list[PipInstall]:
    """Every ``pip install`` in a list of shell commands (``&&``/``;``/``||`` chains split)."""
    found = []
    for command in commands:
        lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|")
        lexer.whitespace_split = True
        segments: list[list[str]] = [[]]
        for token in lexer:
            if token in (";", "&&", "||", "|", "&"):
                segments.append([])
            else:
                segments[-1].append(token)
        for words in segments:
            if len(words) >= 2 and Path(words[0]).name in ("pip", "pip3") and words[1] == "install":
                pass
            elif len(words) >= 4 and words[1:4] == ["-m", "pip", "install"]:
                pass
            else:
                continue
            pins = {}
            for w in words:
                m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", w)
                if m:
                    pins[m.group(1).lower()] = m.group(2)
            text = " ".join(words)
            idx = PYTORCH_INDEX.search(text)
            found.append(PipInstall(text, pins, idx.group(1) if idx else None, idx.group(2) if idx else None))
    return found


def custom_resources(node_type: dict[str, Any]) -> dict[str, float]:
    """The non-built-in resources a node type advertises."""
    return {k: v for k, v in (node_type.get("resources") or {}).items() if k not in BUILTIN_RESOURCES}


def uncommented_keys(path: Path) -> list[str]:
    """Block-style mapping keys with neither a comment line above nor a comment on their line."""
    lines = Path(path).read_text().splitlines()
    missing = []

    def walk(node: yaml.Node, where: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{where}.{key.value}" if where else str(key.value)
                if not node.flow_style:
                    row = key.start_mark.line
                    above = next((lines[i].strip() for i in range(row - 1, -1, -1) if lines[i].strip()), "")
                    if not above.startswith("#") and " #" not in lines[row]:
                        missing.append(f"{name} (line {row + 1})")
                walk(value, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, f"{where}[{i}]")

    walk(yaml.compose(Path(path).read_text()), "")
    return missing


# --------------------------------------------------------------------------- processes


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (held open together so they differ)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _processes_of(temp_root: str, gcs_address: str) -> dict[int, psutil.Process]:
    """This cluster's processes: those naming its temp dir or its GCS address, plus their children.

    Every process a Ray node starts directly names one of the two on its
    command line (``--session-dir``, ``--address``...); workers and agents are
    their children. Nothing is matched by program name.
    """
    addr = re.compile(re.escape(gcs_address) + r"(?!\d)")
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmdline = " ".join(proc.info["cmdline"] or ())
        except psutil.Error:
            continue
        if temp_root in cmdline or addr.search(cmdline):
            found[proc.pid] = proc
    for proc in list(found.values()):
        try:
            for child in proc.children(recursive=True):
                found[child.pid] = child
        except psutil.Error:
            continue
    found.pop(os.getpid(), None)
    return found


def end_processes(procs: dict[int, psutil.Process], grace_s: float = 5.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s``, exactly these processes."""
    for proc in procs.values():
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(list(procs.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=5)


# --------------------------------------------------------------------------- the simulated cluster


@dataclass
class Cluster:
    """A running head (optionally with the fake multi-node autoscaler), and how to talk to it."""

    root: Path  # temp root: home/, ray/ (Ray's --temp-dir), cluster.yaml
    config: dict[str, Any] | None  # the autoscaling config the head runs with (None: no autoscaler)
    gcs_address: str
    dashboard_url: str
    token: str
    env: dict[str, str]  # environment of an authorised client (and of the cluster)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def client_env(self, *, authorised: bool = True) -> dict[str, str]:
        """Environment for a ``ray`` CLI client; unauthorised = no token anywhere, empty HOME."""
        if authorised:
            return dict(self.env)
        env = {k: v for k, v in self.env.items() if k not in _FOREIGN_ENV}
        env["HOME"] = str(self.root / "stranger")
        Path(env["HOME"]).mkdir(exist_ok=True)
        return env

    def driver_env(self) -> dict[str, str]:
        """Environment for a Python process that joins the cluster with ``ray.init()``."""
        return {**self.env, "RAY_ADDRESS": self.gcs_address}

    @contextlib.contextmanager
    def connect(self, **init_kwargs: Any) -> Iterator[None]:
        """Join the cluster as a driver from *this* process (``ray.init``), and leave it on exit.

        Setting the environment is not enough once ``ray`` has been imported:
        Ray reads ``RAY_AUTH_MODE`` into its config once, and turns the
        address 127.0.0.1 into the machine's interface IP unless clusters are
        "disabled" (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, read at import).
        So this also refreshes the config and pins this process to loopback,
        and restores both on exit.
        """
        import ray
        import ray._private.ray_constants as ray_constants
        from ray._raylet import AuthenticationTokenLoader, Config

        keys = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
        saved_env = {k: os.environ.get(k) for k in keys}
        saved_cluster_flag = ray_constants.ENABLE_RAY_CLUSTER
        os.environ.pop("RAY_ADDRESS", None)
        os.environ.pop("RAY_AUTH_TOKEN", None)
        os.environ.update(
            RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=self.env["RAY_AUTH_TOKEN_PATH"], RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"
        )
        ray_constants.ENABLE_RAY_CLUSTER = False  # read at call time by services.get_node_ip_address()
        Config.initialize("")  # re-read RAY_AUTH_MODE
        AuthenticationTokenLoader.instance().reset_cache()
        try:
            ray.init(address=self.gcs_address, **init_kwargs)
            yield
        finally:
            ray.shutdown()
            for k, v in saved_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            ray_constants.ENABLE_RAY_CLUSTER = saved_cluster_flag
            Config.initialize("")
            AuthenticationTokenLoader.instance().reset_cache()

    def submit_pipeline(self, script: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """``ray job submit --working-dir <repo> -- python <script> <args>``, waiting for the end.

        ``script`` is relative to the repository root (e.g. ``pipelines/extract.py``);
        stdout carries the job's log.
        """
        return self.submit(REPO / script, *args, working_dir=REPO, timeout=timeout)

    def ray(self, *args: str, authorised: bool = True, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """Run the ``ray`` CLI against this cluster."""
        full_env = self.client_env(authorised=authorised)
        full_env.update(env or {})
        return subprocess.run(
            [RAY_CLI, *args], env=full_env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )

    def submit(
        self,
        script: Path | None,
        *args: str,
        working_dir: Path | None = None,
        entrypoint: list[str] | None = None,
        authorised: bool = True,
        wait: bool = True,
        env: dict[str, str] | None = None,
        timeout: float = 240,
        submission_id: str | None = None,
    ) -> subprocess.CompletedProcess:
        """``ray job submit`` a Python script (run with this interpreter) or a raw entrypoint.

        Args:
            script: path of the script, relative to ``working_dir`` or absolute; None with ``entrypoint``.
            *args: script arguments.
            working_dir: shipped with ``--working-dir`` (defaults to the script's folder).
            entrypoint: a full command instead of ``python script args``.
            authorised: False submits with no token at all.
            wait: False passes ``--no-wait``.
        """
        if entrypoint is None:
            assert script is not None
            script = Path(script)
            working_dir = working_dir or script.parent
            rel = script.relative_to(working_dir) if script.is_absolute() else script
            entrypoint = [sys.executable, str(rel), *args]
        cmd = ["job", "submit", "--address", self.dashboard_url]
        if working_dir is not None:
            cmd += ["--working-dir", str(working_dir)]
        if not wait:
            cmd.append("--no-wait")
        if submission_id:
            cmd += ["--submission-id", submission_id]
        return self.ray(*cmd, "--", *entrypoint, authorised=authorised, env=env, timeout=timeout)

    def state(self):
        """Ray's state API client (``list_nodes``/``list_actors`` use the same one), with our token."""
        from ray.util.state.api import StateApiClient

        return StateApiClient(address=self.dashboard_url, headers=self.headers)

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url, headers=self.headers)

    def list_nodes(self) -> list[dict[str, Any]]:
        from ray.util.state.common import ListApiOptions, StateResource

        nodes = self.state().list(StateResource.NODES, ListApiOptions(detail=True, limit=1000), raise_on_missing_output=False)
        return [n if isinstance(n, dict) else n.__dict__ for n in nodes]

    def list_actors(self) -> list[dict[str, Any]]:
        from ray.util.state.common import ListApiOptions, StateResource

        actors = self.state().list(StateResource.ACTORS, ListApiOptions(detail=True, limit=10000), raise_on_missing_output=False)
        return [a if isinstance(a, dict) else a.__dict__ for a in actors]

    def node_types(self) -> dict[str, str]:
        """``{node_id: node type}`` for every node the cluster has seen, dead ones included."""
        return {n["node_id"]: node_type_of(n, self.config) for n in self.list_nodes()}

    def alive_workers(self) -> dict[str, str]:
        """``{node_id: node type}`` of alive non-head nodes."""
        return {
            n["node_id"]: node_type_of(n, self.config)
            for n in self.list_nodes()
            if n["state"] == "ALIVE" and not n["is_head_node"]
        }

    def stop(self, *, keep_files: bool = False) -> None:
        """End every process this cluster started (by pid), then drop its temp files."""
        end_processes(_processes_of(str(self.root), self.gcs_address))
        if not keep_files:
            shutil.rmtree(self.root, ignore_errors=True)


def node_type_of(node: dict[str, Any], cluster_cfg: dict[str, Any] | None) -> str:
    """The node type of a state-API node record, told by the resources it advertises.

    The fake provider does not label nodes with their type, so match each
    worker type's custom resources and GPU count against ``resources_total``.
    """
    if cluster_cfg is None:
        raise ValueError("node types are only known for a cluster started with an autoscaling config")
    if node.get("is_head_node"):
        return cluster_cfg["head_node_type"]
    total = node.get("resources_total") or {}
    matches = []
    for name, spec in cluster_cfg["available_node_types"].items():
        if name == cluster_cfg["head_node_type"]:
            continue
        res = spec.get("resources") or {}
        if all(total.get(k) == float(v) for k, v in custom_resources(spec).items()) and total.get("GPU", 0.0) == float(
            res.get("GPU", 0)
        ):
            matches.append(name)
    if len(matches) != 1:
        raise AssertionError(f"node {node.get('node_id')} with {total} matches node types {matches}")
    return matches[0]


def start_cluster(
    *,
    head_cpus: int = 2,
    autoscaling_config: Path | None = None,
    extra_env: dict[str, str] | None = None,
    timeout: float = 90,
) -> Cluster:
    """Start a Ray head on 127.0.0.1 with token auth, isolated from the machine's Ray state.

    Args:
        head_cpus: CPUs the head advertises.
        autoscaling_config: a cluster YAML for Ray's fake multi-node autoscaler
            (see :func:`start_fake_cluster`); None for a plain single-node head.
        extra_env: variables for every process of the cluster and its clients
            (e.g. an S3 endpoint, as an instance profile would provide on AWS).
        timeout: seconds to wait for ``ray start`` and then the jobs API.

    The caller must call :meth:`Cluster.stop`. Join it from this process with
    ``with cluster.connect(): ...`` (plain ``ray.init`` after setting the
    environment is not enough once ``ray`` is imported), from a subprocess with
    ``env=cluster.driver_env()``, or submit jobs with :meth:`Cluster.submit`.
    The temp root is short (``/tmp/rdfXXXX``) because Ray's Unix socket paths
    must stay under 108 bytes.
    """
    root = Path(tempfile.mkdtemp(prefix="rdf"))
    home = root / "home"
    home.mkdir()
    gcs_port, dash_port, client_port, agent_port, metrics_port = free_ports(5)

    env = {k: v for k, v in os.environ.items() if k not in _FOREIGN_ENV}
    env.update(
        HOME=str(home),
        PATH=f"{_BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # every node and driver on 127.0.0.1, like a laptop
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.update(extra_env or {})
    config = None
    autoscaling_args = []
    if autoscaling_config is not None:
        config = load_yaml(autoscaling_config)
        # The fake provider joins new nodes to <ip>:6379 unless told where the GCS is.
        config["provider"]["gcs_address"] = f"127.0.0.1:{gcs_port}"
        config_path = root / "cluster.yaml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        autoscaling_args = [f"--autoscaling-config={config_path}"]
        env.update(RAY_FAKE_CLUSTER="1", AUTOSCALER_UPDATE_INTERVAL_S="1")
    # Ray's own token tool, into our HOME; then point every process at that file explicitly.
    subprocess.run([RAY_CLI, "get-auth-token", "--generate"], env=env, check=True, capture_output=True, timeout=60)
    token_path = home / ".ray" / "auth_token"
    env.update(RAY_AUTH_TOKEN_PATH=str(token_path), RAY_AUTH_MODE="token")

    cmd = [
        RAY_CLI, "start", "--head",
        f"--num-cpus={head_cpus}", "--num-gpus=0",
        "--node-ip-address=127.0.0.1",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash_port}",
        f"--ray-client-server-port={client_port}",
        f"--dashboard-agent-listen-port={agent_port}",
        f"--metrics-export-port={metrics_port}",
        "--min-worker-port=0", "--max-worker-port=0",
        f"--temp-dir={root / 'ray'}",
        *autoscaling_args,
        "--disable-usage-stats",
    ]  # fmt: skip
    # Output to a file, not a pipe: the daemons ray start leaves behind would hold a pipe open.
    with open(root / "ray-start.log", "wb") as out:
        proc = subprocess.Popen(cmd, env=env, cwd=root, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = Cluster(
        root=root,
        config=config,
        gcs_address=f"127.0.0.1:{gcs_port}",
        dashboard_url=f"http://127.0.0.1:{dash_port}",
        token=token_path.read_text().strip(),
        env=env,
    )
    try:
        returncode = proc.wait(timeout=timeout)
        if returncode != 0:
            log = (root / "ray-start.log").read_text(errors="replace")
            raise RuntimeError(f"ray start failed ({returncode}):\n{log[-4000:]}")
        _wait_for_jobs_api(cluster, deadline=time.monotonic() + timeout)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start_fake_cluster(
    yaml_path: Path = FAKE_CLUSTER_YAML, *, head_cpus: int = 1, extra_env: dict[str, str] | None = None, timeout: float = 90
) -> Cluster:
    """Start a head node that autoscales with Ray's fake multi-node provider from ``yaml_path``, token auth on."""
    return start_cluster(head_cpus=head_cpus, autoscaling_config=yaml_path, extra_env=extra_env, timeout=timeout)


FakeCluster = Cluster  # the autoscaling flavour; same class


def _wait_for_jobs_api(cluster: Cluster, deadline: float) -> None:
    import requests

    last: Exception | str = "no answer"
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{cluster.dashboard_url}/api/jobs/", headers=cluster.headers, timeout=5)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}: {r.text[:200]}"
        except requests.RequestException as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"jobs API at {cluster.dashboard_url} not ready: {last}")


@dataclass
class PlacementRun:
    """What happened while one job ran on the simulated cluster."""

    status: str  # final job status, e.g. "SUCCEEDED"
    logs: str
    submit_s: float  # wall time of `ray job submit --no-wait`
    first_seen_s: dict[str, float]  # node type -> seconds from submit until a node of it was ALIVE
    job_s: float  # seconds from submit until the job finished
    scale_down_s: float | None  # seconds from job end until no worker node was ALIVE (None: not waited)
    stage_nodes: dict[str, list[str]]  # actor class pattern -> node types its actors ran on
    node_types: dict[str, str]  # node id -> node type, every node seen


def run_placement_job(
    cluster: Cluster,
    script: Path,
    *args: str,
    working_dir: Path | None = None,
    stages: tuple[str, ...] = ("CropStage", "FeatureStage"),
    job_timeout: float = 180,
    scale_down_timeout: float | None = 90,
    poll_s: float = 0.5,
) -> PlacementRun:
    """Submit ``script`` (e.g. pipelines/extract.py), watch the cluster, collect placement.

    Polls the state API while the job runs to time the scale-up, waits for the
    job to end, optionally waits for the workers to scale back to zero, then maps
    every actor whose class name contains one of ``stages`` to its node type.
    """
    from ray.job_submission import JobStatus

    submission_id = f"raydf-placement-{int(time.time() * 1000)}"
    t0 = time.monotonic()
    submitted = cluster.submit(script, *args, working_dir=working_dir, wait=False, env=None, timeout=120, submission_id=submission_id)
    submit_s = time.monotonic() - t0
    if submitted.returncode != 0:
        raise AssertionError(f"ray job submit failed ({submitted.returncode}):\n{submitted.stdout[-3000:]}\n{submitted.stderr[-3000:]}")
    client = cluster.jobs()
    first_seen: dict[str, float] = {}
    terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
    deadline = t0 + job_timeout
    while True:
        now = time.monotonic() - t0
        for node_type in set(cluster.alive_workers().values()):
            first_seen.setdefault(node_type, now)
        status = client.get_job_status(submission_id)
        if status in terminal:
            job_s = time.monotonic() - t0
            break
        if time.monotonic() > deadline:
            client.stop_job(submission_id)
            raise TimeoutError(f"job {submission_id} still {status} after {job_timeout}s:\n{client.get_job_logs(submission_id)[-3000:]}")
        time.sleep(poll_s)
    logs = client.get_job_logs(submission_id)

    scale_down_s = None
    if scale_down_timeout is not None:
        t_end = time.monotonic()
        wait_for(lambda: not cluster.alive_workers(), timeout=scale_down_timeout, interval=poll_s, what="workers to scale down to zero")
        scale_down_s = time.monotonic() - t_end

    node_types = cluster.node_types()
    stage_nodes: dict[str, list[str]] = {stage: [] for stage in stages}
    for actor in cluster.list_actors():
        for stage in stages:
            if stage in (actor.get("class_name") or ""):
                stage_nodes[stage].append(node_types.get(actor["node_id"], f"unknown:{actor['node_id']}"))
    return PlacementRun(str(status), logs, submit_s, first_seen, job_s, scale_down_s, stage_nodes, node_types)


def documented_command(markdown: str, startswith: str, must_contain: str = "") -> list[str]:
    """The first command in a fenced bash block of ``markdown`` that starts with ``startswith``.

    Backslash continuations are joined; the command is split like a shell would.
    """
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line.startswith(startswith) and must_contain in line:
                return shlex.split(line, comments=True)
    raise AssertionError(f"no documented command starting with {startswith!r} containing {must_contain!r}")


def replace_option(argv: list[str], option: str, value: str) -> list[str]:
    """Copy of ``argv`` with the value after ``option`` replaced (the option must be there)."""
    i = argv.index(option)
    return [*argv[: i + 1], value, *argv[i + 2 :]]


def popen_logged(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    """Start a server with its output in ``log`` (not a pipe nobody reads)."""
    with open(log, "wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def end_process_tree(proc: subprocess.Popen, grace_s: float = 3.0) -> None:
    """End ``proc`` and its children, by pid (a test's own server: SIGKILL after ``grace_s``)."""
    try:
        root = psutil.Process(proc.pid)
        procs = {p.pid: p for p in root.children(recursive=True)}
        procs[root.pid] = root
    except psutil.NoSuchProcess:
        return
    end_processes(procs, grace_s=grace_s)


def wait_for(predicate, *, timeout: float, interval: float = 0.5, what: str = "condition"):
    """Poll ``predicate()`` until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def parse_marker_line(output: str, marker: str) -> dict[str, Any]:
    """The JSON after ``marker`` on the last output line that starts with it."""
    lines = [ln for ln in output.splitlines() if ln.startswith(marker)]
    if not lines:
        raise AssertionError(f"no {marker!r} line in output:\n{output[-4000:]}")
    return json.loads(lines[-1][len(marker) :])


__all__ = [
    "CLUSTER_YAML",
    "FAKE_CLUSTER_YAML",
    "Cluster",
    "FakeCluster",
    "PlacementRun",
    "INFRA",
    "PYPROJECT",
    "REPO",
    "custom_resources",
    "documented_command",
    "end_process_tree",
    "end_processes",
    "free_ports",
    "image_ray_version",
    "load_yaml",
    "node_type_of",
    "parse_marker_line",
    "pinned_versions",
    "pip_installs",
    "popen_logged",
    "replace_option",
    "run_placement_job",
    "start_cluster",
    "start_fake_cluster",
    "uncommented_keys",
    "validate_cluster_config",
    "wait_for",
]
