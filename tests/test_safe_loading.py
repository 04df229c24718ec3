"""Safe loading and redaction: no file raydf reads can run code, no URI raydf shows keeps a secret.

**Loading.** raydf's source holds no unsafe deserialisation (checked with :mod:`ast`). A
checkpoint, bundle, weights file, sweep file, MLflow model or feature part carrying a crafted
pickle -- a ``__reduce__`` that runs ``exec`` to write a marker file -- goes through every
loader raydf has and is refused with a clear error; the payload never runs (no marker) and no
unpickler resolves a single global (a :func:`sys.addaudithook` hook on ``pickle.find_class``,
the event CPython's unpickler raises for every global it looks up; torch's weights-only
unpickler resolves only its allow-list and raises none). That the payload is live is shown too.

**Redaction.** :func:`raydf.tracking.redact` / :func:`~raydf.tracking.redact_uri` on user info
and presigned URLs (a real one, signed by botocore), and end to end: an extraction and a
sweep whose MLflow tracking URI carries user info (a real ``mlflow server``) leave the secret
nowhere -- printed summary, log file, MLflow params, tags and artifacts, ``raydf_sweep.json``.
"""

from __future__ import annotations

import ast
import io
import os
import pickle
import re
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
RAYDF = REPO / "raydf"


# ---- the payload -----------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


_UNPICKLED: list[tuple[str, Any]] = []
_WATCH = threading.local()


def _audit(event: str, args: Any) -> None:
    if event == "pickle.find_class" and getattr(_WATCH, "on", False):
        _UNPICKLED.append((event, args))


sys.addaudithook(_audit)  # process-wide and permanent; records only inside watch_unpickling()


class watch_unpickling:
    """Collect every global an unpickler resolves in this thread (``pickle.find_class`` events)."""

    def __enter__(self) -> list[tuple[str, Any]]:
        _UNPICKLED.clear()
        _WATCH.on = True
        return _UNPICKLED

    def __exit__(self, *exc: Any) -> None:
        _WATCH.on = False


class Evil:
    """Crafted files around one payload; ``ran`` says whether the payload has run."""

    def __init__(self, tmp: Path) -> None:
        self.dir = tmp
        self.marker = tmp / "PAYLOAD_RAN"

    @property
    def ran(self) -> bool:
        return self.marker.exists()

    def payload(self) -> Payload:
        return Payload(self.marker)

    def torch_file(self, path: Path, obj: Any) -> Path:
        """``torch.save`` of ``obj`` (a legit-looking structure with the payload inside)."""
        import torch

        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path)
        return path

    def pickle_file(self, path: Path) -> Path:
        """A bare pickle (not torch's zip format) of the payload."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(self.payload(), protocol=2))
        return path


@pytest.fixture
def evil(tmp_path) -> Evil:
    return Evil(tmp_path)


def test_the_payload_is_live(evil):
    """What every loader below refuses really runs code when unpickled."""
    with watch_unpickling() as seen:
        pickle.loads(pickle.dumps(evil.payload()))
    assert evil.ran
    assert ("pickle.find_class", ("builtins", "exec")) in seen


def _refused(evil: Evil, seen: list, exc_info: Any, path: Path | str) -> None:
    assert not evil.ran, "the payload ran"
    assert seen == [], f"an unpickler resolved globals: {seen}"
    assert str(path) in str(exc_info.value) or Path(str(path)).name in str(exc_info.value), str(exc_info.value)


def _clear(message: str, path: Path | str) -> None:
    """A refusal a person can act on: it names the file and the code-carrying global, plainly."""
    assert Path(str(path)).name in message, message
    assert re.search(r"\b(builtins\.)?exec\b", message), f"the refusal does not name the global the file carries: {message!r}"
    assert "\x1b[" not in message, f"terminal escape codes in the message: {message!r}"
    assert "weights_only=False" not in message and "weights_only set to False" not in message, (
        f"the refusal invites loading the file unsafely: {message!r}"
    )


# ---- the source ------------------------------------------------------------------------------------
_UNSAFE_CALLS = {
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "cloudpickle.load", "cloudpickle.loads", "ray.cloudpickle.load",
    "ray.cloudpickle.loads", "dill.load", "dill.loads", "joblib.load", "pandas.read_pickle", "marshal.load",
    "marshal.loads", "shelve.open", "yaml.unsafe_load", "yaml.full_load", "torch.jit.load", "torch.package.PackageImporter",
    "numpy.lib.format.read_array",
}  # fmt: skip


def _calls(path: Path) -> list[tuple[int, str, ast.Call]]:
    """(line, qualified name, node) of every call, names resolved through the module's imports."""
    tree = ast.parse(path.read_text(), str(path))
    alias: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                alias[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                alias[a.asname or a.name] = f"{node.module}.{a.name}"
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        parts, f = [], node.func
        while isinstance(f, ast.Attribute):
            parts.append(f.attr)
            f = f.value
        if not isinstance(f, ast.Name):
            continue
        parts.append(alias.get(f.id, f.id))
        name = ".".join(reversed(parts))
        name = {"np": "numpy", "pd": "pandas"}.get(name.split(".")[0], name.split(".")[0]) + name[len(name.split(".")[0]) :]
        out.append((node.lineno, name, node))
    return out


def _kw(node: ast.Call, name: str) -> Any:
    for k in node.keywords:
        if k.arg == name:
            return k.value.value if isinstance(k.value, ast.Constant) else k.value
    return None


def test_raydf_source_has_no_unsafe_deserialisation():
    files = sorted(RAYDF.rglob("*.py"))
    assert len(files) > 20
    problems = []
    for path in files:
        rel = path.relative_to(REPO)
        if "weights_only=False" in path.read_text():  # grep -rn "weights_only=False" raydf
            problems.append(f"{rel}: weights_only=False")
        for line, name, node in _calls(path):
            where = f"{rel}:{line} {name}"
            if name in _UNSAFE_CALLS:
                problems.append(where)
            elif name in ("torch.load", "torch.serialization.load") and _kw(node, "weights_only") is not True:
                problems.append(f"{where} without weights_only=True")
            elif name == "numpy.load" and _kw(node, "allow_pickle") not in (None, False):
                problems.append(f"{where} with allow_pickle")
            elif name == "yaml.load" and getattr(_kw(node, "Loader"), "attr", None) not in ("SafeLoader", "CSafeLoader"):
                problems.append(f"{where} without a safe Loader")
    assert not problems, "unsafe deserialisation in raydf:\n" + "\n".join(problems)
    # the scan sees the loads raydf does have
    seen = {name for p in files for _, name, _ in _calls(p)}
    assert {"torch.load", "yaml.safe_load", "json.loads"} <= seen


# ---- model bundles ---------------------------------------------------------------------------------
def _bundle_shaped(evil: Evil) -> dict[str, Any]:
    """A dict shaped like a raydf bundle, with the payload where a config would be."""
    import torch

    from raydf.bundle import BUNDLE_FORMAT

    return {"format": BUNDLE_FORMAT, "state_dict": {"w": torch.zeros(2)}, "fusion_config": {}, "store": {},
            "train": {"config": evil.payload()}, "threshold": 0.5}  # fmt: skip


@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_crafted_bundle_is_refused_by_every_way_to_load_a_model(evil, kind):
    from raydf.bundle import BUNDLE_FILE, BundleError, ModelBundle, resolve_model

    d = evil.dir / "model"
    path = evil.torch_file(d / BUNDLE_FILE, _bundle_shaped(evil)) if kind == "torch" else evil.pickle_file(d / BUNDLE_FILE)
    for load, arg in ((ModelBundle.load, path), (lambda p: resolve_model(str(p)), path), (lambda p: resolve_model(str(p)), d)):
        with watch_unpickling() as seen, pytest.raises(BundleError) as exc_info:
            load(arg)
        _refused(evil, seen, exc_info, path)


def test_a_crafted_bundle_refusal_is_clear(evil):
    from raydf.bundle import BUNDLE_FILE, BundleError, ModelBundle

    path = evil.torch_file(evil.dir / BUNDLE_FILE, _bundle_shaped(evil))
    with pytest.raises(BundleError) as exc_info:
        ModelBundle.load(path)
    _clear(str(exc_info.value), path)


# ---- training checkpoints (Ray Train checkpoint directories) --------------------------------------
@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_a_crafted_training_checkpoint_is_refused(evil, kind):
    import torch

    from raydf.train import CHECKPOINT_FILE, load_checkpoint_state

    d = evil.dir / "checkpoint_000003"
    if kind == "torch":
        evil.torch_file(d / CHECKPOINT_FILE, {"epoch": 3, "model": {"w": torch.zeros(2)}, "history": [evil.payload()]})
    else:
        evil.pickle_file(d / CHECKPOINT_FILE)
    with watch_unpickling() as seen, pytest.raises(RuntimeError) as exc_info:
        load_checkpoint_state(d)
    _refused(evil, seen, exc_info, d / CHECKPOINT_FILE)


def test_a_crafted_training_checkpoint_refusal_is_clear(evil):
    from raydf.train import CHECKPOINT_FILE, load_checkpoint_state

    d = evil.dir / "checkpoint_000003"
    evil.torch_file(d / CHECKPOINT_FILE, {"epoch": 3, "history": [evil.payload()]})
    with pytest.raises(RuntimeError) as exc_info:
        load_checkpoint_state(d)
    _clear(str(exc_info.value), d / CHECKPOINT_FILE)


# ---- extractor weights (local, file://, s3://, and through the model builders) -------------------
@pytest.mark.parametrize("kind", ["torch", "pickle"])
def test_crafted_extractor_weights_are_refused(evil, kind):
    import torch

    from raydf.models.content import load_content_model
    from raydf.models.style import load_style_encoder
    from raydf.models.weights import WeightsError, load_checkpoint

    path = evil.dir / "psp_ffhq_encode.pt"
    if kind == "torch":
        evil.torch_file(path, {"state_dict": {"encoder.w": torch.zeros(2)}, "latent_avg": evil.payload()})
    else:
        evil.pickle_file(path)
    loaders = (
        (load_checkpoint, str(path)),
        (load_checkpoint, path.as_uri()),
        (lambda p: load_style_encoder(p, "psp_tiny"), str(path)),
        (load_content_model, str(path)),
    )
    for load, arg in loaders:
        with watch_unpickling() as seen, pytest.raises(WeightsError) as exc_info:
            load(arg)
        _refused(evil, seen, exc_info, path)


def test_crafted_extractor_weights_on_s3_are_refused(evil, s3):
    from raydf.models.weights import WeightsError, load_checkpoint

    bucket = s3.make_bucket("weights")
    s3.client.put_object(Bucket=bucket, Key="w/SLOW_8x8_R50.pyth", Body=pickle.dumps(evil.payload(), protocol=2))
    uri = f"s3://{bucket}/w/SLOW_8x8_R50.pyth"
    with watch_unpickling() as seen, pytest.raises(WeightsError) as exc_info:
        load_checkpoint(uri)
    _refused(evil, seen, exc_info, uri)


def test_crafted_extractor_weights_refusal_is_clear(evil):
    from raydf.models.weights import WeightsError, load_checkpoint

    path = evil.torch_file(evil.dir / "psp_ffhq_encode.pt", {"latent_avg": evil.payload()})
    with pytest.raises(WeightsError) as exc_info:
        load_checkpoint(str(path))
    _clear(str(exc_info.value), path)


# ---- sweep files --------------------------------------------------------------------------------------
def test_a_pickle_in_raydf_sweep_json_just_fails_to_parse(evil):
    from raydf.tune import SWEEP_FILE, read_sweep_spec

    d = evil.dir / "tune-1"
    evil.pickle_file(d / SWEEP_FILE)
    with watch_unpickling() as seen, pytest.raises(ValueError, match="not a raydf sweep spec") as exc_info:
        read_sweep_spec(str(d))
    _refused(evil, seen, exc_info, d)


@pytest.mark.integration
def test_resuming_a_sweep_whose_tune_state_carries_a_payload_never_runs_it(evil, ray_cluster):
    """``raydf tune --resume`` hands the sweep dir to ``Tuner.restore``, which unpickles ``tuner.pkl``
    (and ``ExperimentAnalysis`` the cloudpickle blobs of ``experiment_state-*.json``): a sweep dir on
    shared storage must not run what someone wrote into it."""
    from raydf.tune import SweepSpec, _write_spec, resume_sweep

    d = evil.dir / "tune-evil"
    spec = SweepSpec(name="tune-evil", path=str(d), features=str(evil.dir / "features"), base={}, space="custom",
                     tracking_uri=None, track=False, experiment="raydf-tune", tags={}, full_report=False,
                     trial_cpus=1.0, max_concurrent=1, expected_trials=1)  # fmt: skip
    _write_spec(spec)
    evil.pickle_file(d / "tuner.pkl")
    with watch_unpickling() as seen, pytest.raises(Exception):  # noqa: B017 - any refusal; what matters is below
        resume_sweep(str(d))
    assert not evil.ran, "resuming the sweep ran the payload in tuner.pkl"
    assert seen == [], f"an unpickler resolved globals: {seen}"


# ---- the MLflow model ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def logged_model(tmp_path_factory):
    """A bundle logged with raydf.mlflow_model.log_model into a sqlite store, as training logs it."""
    import mlflow
    import torch

    from raydf import tracking
    from raydf.bundle import BUNDLE_FILE, MODEL_TAG, ModelBundle
    from raydf.config import ExtractConfig, FusionConfig, load_config
    from raydf.extract import store_config
    from raydf.mlflow_model import log_model
    from raydf.models.fusion import FusionClassifier

    root = tmp_path_factory.mktemp("mlflow-model")
    fusion = load_config(FusionConfig, {"gru_hidden": 16, "d_model": 16, "transformer_heads": 2, "ff_dim": 32, "fc_hidden": 8, "transformer_layers": 1})
    torch.manual_seed(0)
    from raydf.video import decoder_identity

    ecfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "video": {"num_frames": 8}})
    sconf = store_config(ecfg, precision="fp32", decoder=decoder_identity(ecfg.video.backend))
    bundle = ModelBundle(state_dict=FusionClassifier(fusion).state_dict(), fusion_config=fusion, store=sconf)
    path = bundle.save(root / BUNDLE_FILE)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    exp = tracking.get_or_create_experiment(tracking.TRAIN_EXPERIMENT)
    with mlflow.start_run(experiment_id=exp) as run:
        log_model(bundle, path, root)
        mlflow.set_tag(MODEL_TAG, "logged")
    model_uri = f"runs:/{run.info.run_id}/model"
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(root / "download")))
    return {"uri": uri, "run_id": run.info.run_id, "model_uri": model_uri, "dir": local, "bundle": bundle}


def test_the_mlflow_model_loads_without_unpickling_anything(logged_model):
    import mlflow
    import numpy as np

    from raydf.mlflow_model import pack

    files = [p for p in logged_model["dir"].rglob("*") if p.is_file()]
    assert files and not [p for p in files if p.suffix in (".pkl", ".pickle", ".joblib", ".cloudpickle")], files
    with watch_unpickling() as seen:
        model = mlflow.pyfunc.load_model(str(logged_model["dir"]))
    assert seen == [], f"loading the MLflow model resolved pickled globals: {seen}"
    b = logged_model["bundle"]
    x = pack(np.zeros((2, b.num_clips, 2048), np.float32), np.zeros((2, b.num_frames, 512), np.float32), np.ones((2, b.num_frames), bool))
    assert model.predict(x).shape == (2,)


def test_a_tampered_mlflow_model_and_run_bundle_are_refused(logged_model, evil, tmp_path):
    """Whoever can write the artifact store swaps the bundle for a payload: loading refuses it."""
    import shutil

    import mlflow

    from raydf.bundle import BUNDLE_ARTIFACT_DIR, BUNDLE_FILE, BundleError, resolve_model

    model_dir = tmp_path / "tampered-model"
    shutil.copytree(logged_model["dir"], model_dir)
    bundles = list(model_dir.rglob("*.pt"))
    assert len(bundles) == 1
    evil.torch_file(bundles[0], _bundle_shaped(evil))
    with watch_unpickling() as seen, pytest.raises(Exception) as exc_info:  # noqa: B017 - MLflow wraps the BundleError
        mlflow.pyfunc.load_model(str(model_dir))
    _refused(evil, seen, exc_info, bundles[0].name)

    # The run's bundle artifact, as `raydf detect` finds the newest model in the store.
    mlflow.set_tracking_uri(logged_model["uri"])
    art = Path(mlflow.get_run(logged_model["run_id"]).info.artifact_uri.removeprefix("file://")) / BUNDLE_ARTIFACT_DIR / BUNDLE_FILE
    saved = art.read_bytes()
    try:
        evil.pickle_file(art)
        for model in (None, f"runs:/{logged_model['run_id']}/{BUNDLE_ARTIFACT_DIR}"):
            with watch_unpickling() as seen, pytest.raises(BundleError) as exc_info:
                resolve_model(model, logged_model["uri"])
            _refused(evil, seen, exc_info, BUNDLE_FILE)
    finally:
        art.write_bytes(saved)


# ---- feature parts --------------------------------------------------------------------------------------
def test_a_feature_part_carrying_a_pickled_extension_type_is_read_as_plain_data(evil, tmp_path):
    """Arrow once unpickled ``arrow.py_extension_type`` columns on read (CVE-2023-47248): a part in a
    shared store must not run code when raydf, pandas or plain pyarrow reads it."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from raydf import schema as S
    from raydf.store import FeatureStore
    from tests.store_helpers import group, identity, table

    out = tmp_path / "features"
    store = FeatureStore(str(out))
    with store.acquire_lease() as lease:
        part = store.write_part(table(group("v", "ok", 1, identity("v"))), epoch=lease.epoch, seq=1)
    t = store.read_part(part)
    i = t.schema.get_field_index(S.NOTE)
    meta = {b"ARROW:extension:name": b"arrow.py_extension_type", b"ARROW:extension:metadata": pickle.dumps(evil.payload())}
    t = t.set_column(i, t.schema.field(i).with_metadata(meta), t.column(i))
    pq.write_table(t, out / part.name)
    assert pq.read_schema(out / part.name).field(S.NOTE).metadata[b"ARROW:extension:name"] == b"arrow.py_extension_type"
    with watch_unpickling() as seen:
        rows = store.read([S.VIDEO_ID, S.NOTE]).to_pylist()
        pq.read_table(out)
        pd.read_parquet(out)
    assert rows == [{S.VIDEO_ID: "v", S.NOTE: ""}]
    assert not evil.ran and seen == []


# ---- redaction ----------------------------------------------------------------------------------------
def _presigned(secret_key: str, token: str, version: str = "s3v4") -> str:
    """A real presigned GET URL (signed offline by botocore with temporary credentials): SigV4
    (``X-Amz-Signature``, ``X-Amz-Credential``, ``X-Amz-Security-Token``) or the query-string SigV2
    botocore still makes for some regions (``AWSAccessKeyId``, ``Signature``, ``x-amz-security-token``)."""
    import boto3
    from botocore.config import Config

    client = boto3.client("s3", aws_access_key_id="ASIAREDACTIONTEST01", aws_secret_access_key=secret_key,
                          aws_session_token=token, region_name="us-east-1", config=Config(signature_version=version))  # fmt: skip
    return client.generate_presigned_url("get_object", Params={"Bucket": "videos", "Key": "real/0001.mp4"}, ExpiresIn=600)


def _raw_param(url: str, key: str) -> str:
    """A query parameter's value as it appears in the URL (still percent-encoded)."""
    m = re.search(rf"[?&]{re.escape(key)}=([^&#]+)", url)
    assert m is not None, f"{key} not in {url}"
    return m.group(1)


def test_redact_removes_user_info_and_presigned_credentials():
    from urllib.parse import urlparse

    from raydf.tracking import redact, redact_uri, safe_params, strip_userinfo

    url = _presigned("presign-secret-key-0123456789", "presign-session-token-ABCDEFGH")
    signature, credential, token = (_raw_param(url, k) for k in ("X-Amz-Signature", "X-Amz-Credential", "X-Amz-Security-Token"))
    s3_presigned = "s3://videos/real/0001.mp4?" + urlparse(url).query
    v2 = _presigned("presign-secret-key-0123456789", "presign-session-token-ABCDEFGH", "s3")
    cases = {
        v2: [_raw_param(v2, "Signature"), _raw_param(v2, "x-amz-security-token"), "ASIAREDACTIONTEST01"],
        "https://alice:hunter2-pass@mlflow.example.com:5000/api": ["hunter2-pass", "alice:"],
        "HTTPS://alice:hunter2-pass@MLFLOW.example.com/": ["hunter2-pass"],
        "https://ghp_tokenAsUser0123@github.com/org/repo.git": ["ghp_tokenAsUser0123"],
        "postgresql+psycopg2://mlflow:db-pass-77@db.internal:5432/mlflow": ["db-pass-77"],
        "https://user:p%40ss-word@host/x": ["p%40ss-word", "ss-word"],
        url: [signature, credential, token, "ASIAREDACTIONTEST01"],
        s3_presigned: [signature, credential, token],
        "https://acct.blob.core.windows.net/c/v.mp4?sv=2022-11-02&se=2030-01-01&sp=r&sig=AzureSig%2Babc": ["AzureSig"],
        "gs://b/v.mp4?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=svc%40p.iam&X-Goog-Signature=deadbeef99": ["deadbeef99", "svc%40p.iam"],
    }
    for uri, secrets in cases.items():
        for out in (redact_uri(uri), redact(f"cannot read {uri}: 403 Forbidden; retry {uri}")):
            for secret in secrets:
                assert secret not in out, f"{secret!r} survived redaction of {uri}: {out}"
    # what is not secret stays readable
    assert redact_uri("https://alice:hunter2-pass@mlflow.example.com:5000/api") == "https://***@mlflow.example.com:5000/api"
    shown = redact_uri(url)
    assert "/real/0001.mp4?" in shown and "X-Amz-Expires=600" in shown
    assert strip_userinfo("http://u:pw@127.0.0.1:5000") == "http://127.0.0.1:5000"
    params = safe_params({"tracking": {"password": "x-pass", "uri": "http://u:pw-secret@h"}, "input": url})
    assert "tracking.password" not in params and "pw-secret" not in repr(params) and signature not in repr(params)


def test_source_identities_keep_no_credentials():
    from raydf.sources import strip_uri

    url = _presigned("presign-secret-key-0123456789", "presign-session-token-ABCDEFGH")
    assert strip_uri(url) == url.split("?")[0]
    assert strip_uri("https://u:pw-secret@host/v.mp4?sig=abc") == "https://host/v.mp4"


def test_a_sweep_spec_never_holds_user_info(tmp_path):
    """``SweepSpec`` (``raydf_sweep.json``) says its URIs carry no credentials: whoever builds one."""
    from raydf.tune import SWEEP_FILE, SweepSpec, _write_spec

    secret = "sweep-spec-secret-91"
    spec = SweepSpec(name="s", path=str(tmp_path / "s"), features=f"https://reader:{secret}@data.example.com/features",
                     base={}, space="custom", tracking_uri=f"http://mlflow:{secret}@127.0.0.1:5000", track=True,
                     experiment="raydf-tune", tags={}, full_report=False, trial_cpus=1.0, max_concurrent=1,
                     expected_trials=1)  # fmt: skip
    _write_spec(spec)
    text = (tmp_path / "s" / SWEEP_FILE).read_text()
    assert secret not in text, text


# ---- redaction end to end: a tracking URI with user info, through a real mlflow server -------------------
@pytest.fixture(scope="module")
def credentialed_mlflow(tmp_path_factory):
    """A real ``mlflow server`` (sqlite backend, proxied artifacts) and a tracking URI for it that
    carries user info with a unique secret (the server ignores the credentials, as one behind a
    proxy that checks them would not)."""
    import uuid

    import requests

    from tests.infra_helpers import end_process_tree, free_ports, popen_logged, wait_for

    root = tmp_path_factory.mktemp("mlflow-server")
    (port,) = free_ports(1)
    argv = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination", str(root / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    proc = popen_logged(argv, root / "server.log", dict(os.environ))

    def healthy() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            return requests.get(f"http://127.0.0.1:{port}/health", timeout=2).ok
        except requests.RequestException:
            return False

    try:
        wait_for(healthy, timeout=120, what="mlflow server /health")
        secret = f"raydf-userinfo-secret-{uuid.uuid4().hex}"
        yield {"uri": f"http://raydf:{secret}@127.0.0.1:{port}", "clean": f"http://127.0.0.1:{port}", "secret": secret, "root": root}
    finally:
        end_process_tree(proc)


def _scan(paths: list[Path], secret: str) -> list[str]:
    """Files (under the given files/dirs) whose bytes hold ``secret``."""
    hits = []
    for p in paths:
        for f in [p] if p.is_file() else p.rglob("*"):
            if f.is_file() and f.stat().st_size < 64 << 20 and secret.encode() in f.read_bytes():
                hits.append(str(f))
    return hits


def _mlflow_text(clean_uri: str, tmp: Path) -> str:
    """Every run's params, tags, dataset inputs and artifact bytes in the store, as one text."""
    import mlflow

    client = mlflow.MlflowClient(clean_uri)
    mlflow.set_tracking_uri(clean_uri)
    out = []
    for exp in client.search_experiments():
        out.append(repr(exp))
        for run in client.search_runs([exp.experiment_id]):
            out.append(repr(run.data.params) + repr(run.data.tags) + repr(run.inputs))
            local = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(tmp / run.info.run_id)))
            out.extend(f.read_bytes().decode("latin-1") for f in local.rglob("*") if f.is_file())
    return "\n".join(out)


@pytest.mark.slow
@pytest.mark.integration
def test_an_extraction_with_a_credentialed_tracking_uri_leaks_nothing(credentialed_mlflow, ray_cluster, generated_dataset, tmp_path):
    import shutil
    import subprocess

    secret, uri = credentialed_mlflow["secret"], credentialed_mlflow["uri"]
    data = tmp_path / "videos"
    for label in ("real", "fake"):
        (data / label).mkdir(parents=True)
        shutil.copy(min((generated_dataset / label).glob("*.mp4"), key=lambda p: p.stat().st_size), data / label)
    out, home = tmp_path / "features", tmp_path / "home"
    env = {**ray_cluster.driver_env(), "RAYDF_HOME": str(home), "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "pipelines/extract.py", "--input", str(data), "--output", str(out), "--layout", "folders",
         "--style-config", "psp_tiny", "--frames", "8", "--tracking-uri", uri],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "status: ok 2" in proc.stdout and "mlflow run:" in proc.stdout
    logs = sorted((home / "logs").glob("extract-*.log"))
    assert logs, "the command wrote no log file"
    leaks = [f"printed: {ln}" for ln in (proc.stdout + proc.stderr).splitlines() if secret in ln]
    leaks += [f"log file {f}" for f in _scan(logs, secret)]
    leaks += [f"feature store {f}" for f in _scan([out], secret)]
    leaks += ["MLflow params/tags/inputs/artifacts"] if secret in _mlflow_text(credentialed_mlflow["clean"], tmp_path / "artifacts") else []
    leaks += [f"MLflow server files {f}" for f in _scan([credentialed_mlflow["root"]], secret)]
    leaks += [f"Ray's logs {f}" for f in _scan([ray_cluster.root / "ray"], secret)]
    assert not leaks, "the tracking URI's secret leaked:\n" + "\n".join(leaks)


@pytest.mark.slow
@pytest.mark.integration
def test_a_sweep_with_a_credentialed_tracking_uri_leaks_nothing(credentialed_mlflow, ray_cluster, extracted, tmp_path, capfd):
    from ray import tune

    from raydf.config import TrainConfig, load_config
    from raydf.tune import SWEEP_FILE, run_sweep

    secret, uri = credentialed_mlflow["secret"], credentialed_mlflow["uri"]
    presigned = _presigned(secret, "sweep-session-token-0")
    base = load_config(TrainConfig, {"model": {"gru_hidden": 16, "d_model": 16, "transformer_heads": 2, "ff_dim": 32, "fc_hidden": 8,
                                               "transformer_layers": 1}, "max_epochs": 1, "num_workers": 1, "cpus_per_worker": 0.5,
                                     "batch_size": 8})  # fmt: skip
    result = run_sweep(str(extracted.features), {"lr": tune.grid_search([1e-3])}, base, num_samples=1, name="redact", storage_path=str(tmp_path / "rr"),
                       tracking_uri=uri, tags={"source": presigned}, max_concurrent=1)  # fmt: skip
    assert result.finished, result
    captured = capfd.readouterr()
    signature = _raw_param(presigned, "X-Amz-Signature")
    spec = (tmp_path / "rr" / "redact" / SWEEP_FILE).read_text()
    text = _mlflow_text(credentialed_mlflow["clean"], tmp_path / "artifacts")
    assert "redact" in text  # the sweep's runs are there
    leaks = []
    for name, secret_value in (("the tracking URI's secret", secret), ("a presigned URL's signature (a tag)", signature)):
        leaks += [f"{name} printed: {ln}" for ln in (captured.out + captured.err).splitlines() if secret_value in ln]
        leaks += [f"{name} in {SWEEP_FILE}"] if secret_value in spec else []
        leaks += [f"{name} in MLflow params/tags/artifacts"] if secret_value in text else []
        leaks += [f"{name} in the sweep's storage: {f}" for f in _scan([tmp_path / "rr"], secret_value)]
    assert not leaks, "\n".join(leaks)


def test_sweep_state_is_resumed_only_as_signed(tmp_path, monkeypatch):
    """What raydf signed at the end of a sweep verifies; a changed or an added pickle does not."""
    from raydf.tune import SweepStateUntrusted, sign_sweep_state, verify_sweep_state

    monkeypatch.setenv("RAYDF_SWEEP_KEY_FILE", str(tmp_path / "key"))
    d = tmp_path / "sweep"
    (d / "trial-1").mkdir(parents=True)
    (d / "tuner.pkl").write_bytes(b"tune's own pickle")
    (d / "experiment_state-1.json").write_text('{"trials": []}')
    (d / "trial-1" / "params.pkl").write_bytes(b"params")
    (d / "trial-1" / "progress.csv").write_text("a,b\n")
    with pytest.raises(SweepStateUntrusted, match="no signature"):
        verify_sweep_state(str(d))
    sign_sweep_state(str(d))
    verify_sweep_state(str(d))
    assert oct((tmp_path / "key").stat().st_mode & 0o777) == "0o600"
    (d / "trial-1" / "progress.csv").write_text("a,b\n1,2\n")  # results are not pickles: no matter
    verify_sweep_state(str(d))
    (d / "tuner.pkl").write_bytes(b"someone else's pickle")
    with pytest.raises(SweepStateUntrusted, match="tuner.pkl"):
        verify_sweep_state(str(d))
    sign_sweep_state(str(d))
    (d / "trial-1" / "evil.pkl").write_bytes(b"added")
    with pytest.raises(SweepStateUntrusted, match="evil.pkl"):
        verify_sweep_state(str(d))
    monkeypatch.setenv("RAYDF_SWEEP_KEY_FILE", str(tmp_path / "another-key"))  # another user's key
    (d / "trial-1" / "evil.pkl").unlink()
    with pytest.raises(SweepStateUntrusted, match="changed"):
        verify_sweep_state(str(d))
