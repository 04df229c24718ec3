"""The detection service: ``raydf serve`` (Ray Serve) over HTTP and WebSocket, its Serve config, its parts.

One real service per module (``python -m raydf.cli serve`` on a free loopback port, token on,
a real model bundle), started before the bundle exists so its no-model answers (503) are seen,
then given the bundle. Clips are generated (raydf.synth) or written with PyAV (tests.media).
Starting Ray and Serve takes 30-80 s on two busy cores, so every test that uses the service is
``slow`` (and ``integration``); the parts and the Serve config are tested without it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import math
import shutil
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import requests
import yaml

from raydf.serve.config import ConfigError, serve_config
from raydf.serve.media import CONTAINERS, sniff_container
from tests.infra_helpers import CLUSTER_YAML, custom_resources, load_yaml
from tests.media import write_audio_only, write_clip, write_declared_size_vp8
from tests.serve_helpers import ARTIFACTS, NUM_FRAMES, cli_detect, generated_clips, make_bundle, sigterm_as_interrupt, start_service

REPO = Path(__file__).resolve().parents[1]
SERVE_YAML = REPO / "infra" / "serve.yaml"
MAX_BYTES = 2 * 1024 * 1024  # the test service's --max-bytes
DETECT_KEYS = {"schema", "video", "fake_probability", "label", "threshold", "aggregation", "model", "faces", "frames", "notes",
               "timings", "explanation"}  # fmt: skip


# ---- container sniffing -----------------------------------------------------------------------------------
# (file name, encoder, muxer, container name the sniffer must give): every one also decodes (read_video).
WRITTEN = [
    ("clip.mp4", "libx264", None, "mp4/mov/3gp (ISO BMFF)"),
    ("clip.mov", "libx264", None, "mp4/mov/3gp (ISO BMFF)"),
    ("clip.3gp", "h263", "3gp", "mp4/mov/3gp (ISO BMFF)"),
    ("clip.mkv", "libx264", None, "matroska/webm"),
    ("clip.webm", "libvpx", None, "matroska/webm"),
    ("clip.avi", "mpeg4", None, "avi"),
    ("clip.ts", "libx264", "mpegts", "mpeg-ts"),
    ("clip.m2ts", "libx264", "mpegts", "m2ts (bdav)"),
    ("clip.mpg", "mpeg2video", "mpeg", "mpeg-ps"),
    ("clip.m2v", "mpeg2video", "mpeg2video", "mpeg video"),
    ("clip.flv", "flv", None, "flv"),
    ("clip.wmv", "wmv2", "asf", "asf/wmv"),
    ("clip.ogv", "libvpx", "ogg", "ogg"),
    ("clip.ivf", "libvpx", "ivf", "ivf"),
    ("clip.rm", "rv10", "rm", "realmedia"),
    ("clip.mxf", "mpeg2video", "mxf", "mxf"),
    ("clip.y4m", "rawvideo", "yuv4mpegpipe", "yuv4mpeg"),
    ("clip.nut", "libx264", "nut", "nut"),
    ("clip.h264", "libx264", "h264", "h264/h265 elementary stream"),
    ("clip.hevc", "libx265", "hevc", "h264/h265 elementary stream"),
]


def test_the_written_formats_cover_every_registered_container():
    assert {w[3] for w in WRITTEN} == {c.name for c in CONTAINERS} - {"quicktime"}


@pytest.mark.parametrize("name,codec,muxer,expected", WRITTEN, ids=[w[0] for w in WRITTEN])
def test_every_video_container_is_sniffed_from_its_first_bytes(tmp_path, name, codec, muxer, expected):
    from raydf.video import read_video

    size = (144, 176) if codec == "h263" else (48, 64)  # H.263 takes only its standard sizes
    frames = np.random.default_rng(0).integers(0, 255, (8, *size, 3), dtype=np.uint8)
    try:
        path = write_clip(tmp_path / name, frames, codec, container=muxer)
    except Exception as exc:  # an encoder this FFmpeg build lacks
        pytest.skip(f"cannot write {name} here: {exc}")
    data = path.read_bytes()
    assert sniff_container(data) == expected
    assert read_video(data, 4, name=name).num_frames == 8  # a real, decodable video of that container


def test_old_quicktime_without_ftyp_is_sniffed(tmp_path):
    mp4 = write_clip(tmp_path / "a.mov", np.zeros((4, 48, 64, 3), np.uint8), "libx264").read_bytes()
    size = struct.unpack(">I", mp4[:4])[0]
    data = mp4[size:]  # the file without its ftyp box starts with the next top-level atom
    assert data[4:8] in (b"wide", b"mdat", b"moov", b"free")
    assert sniff_container(data) == "quicktime"


def _png(width: int, height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


def _image(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (10, 120, 200)).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("kind", ["png", "jpeg", "gif", "webp", "pdf", "zip", "wav", "text", "text starting with G", "json", "empty", "3 bytes"])
def test_non_video_bytes_are_no_container(tmp_path, kind):
    import wave
    import zipfile

    if kind in ("png", "jpeg", "gif", "webp"):
        data = _image(kind.upper())
    elif kind == "pdf":
        data = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n" * 20
    elif kind == "zip":
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.txt", "hello" * 100)
        data = buf.getvalue()
    elif kind == "wav":  # RIFF, but not AVI
        with wave.open(str(tmp_path / "a.wav"), "wb") as w:
            w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\0\0" * 800)
        data = (tmp_path / "a.wav").read_bytes()
    elif kind == "text":
        data = b"this is not a video\n" * 50
    elif kind == "text starting with G":  # 0x47 is the MPEG-TS sync byte
        data = b"Good morning, this is text.\n" * 40
    elif kind == "json":
        data = json.dumps({"video": "clip.mp4"}).encode()
    elif kind == "empty":
        data = b""
    else:
        data = b"\x1a\x45\xdf"
    assert sniff_container(data) is None


# ---- small parts ---------------------------------------------------------------------------------------------
def test_uri_prefix_rules():
    from raydf.serve.app import uri_allowed

    allowed = ("s3://bucket/videos/", "file:///data/clips")
    assert uri_allowed("s3://bucket/videos/a.mp4", allowed)
    assert uri_allowed("s3://bucket/videos/sub/a.mp4", allowed)
    assert uri_allowed("file:///data/clips/a.mp4", allowed)
    assert not uri_allowed("file:///data/clips-private/a.mp4", allowed)  # a sibling, not under the prefix
    assert not uri_allowed("s3://bucket/videos/../secrets/a.mp4", allowed)
    assert not uri_allowed("file:///data/clips/./../../etc/passwd", allowed)
    assert not uri_allowed("s3://bucket/videos\\..\\x", allowed)
    assert not uri_allowed("s3://bucket/other/a.mp4", allowed)
    assert not uri_allowed("s3://bucket/videos/a.mp4", ())  # nothing allowed by default


def test_rolling_window_is_due_every_k_frames_and_pads_short_windows():
    from raydf.serve.stream import RollingWindow

    w = RollingWindow(size=8, every=3)
    due = [w.push(bytes([i]), i / 10, float(i)) for i in range(10)]
    assert [i + 1 for i, d in enumerate(due) if d] == [3, 6, 9]
    snap = w.snapshot()
    assert snap.indices.tolist() == list(range(2, 10))  # the last T frames
    assert snap.times.tolist() == pytest.approx([i / 10 for i in range(2, 10)])
    assert snap.newest_arrival == 9.0 and snap.received == 10

    short = RollingWindow(size=8, every=1)
    for i in range(3):
        short.push(bytes([i]), float(i), 0.0)
    assert short.snapshot().indices.tolist() == [0, 1, 2, 0, 1, 2, 0, 1]  # circular padding, as a short video


def test_streamed_frames_are_checked_before_decoding():
    from PIL import Image

    from raydf.serve.errors import ServiceError
    from raydf.serve.stream import decode_frame

    rgb = decode_frame(_image("JPEG"), max_pixels=10_000)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    with pytest.raises(ServiceError) as e:
        decode_frame(b"not an image at all", max_pixels=10_000)
    assert e.value.status == 415
    with pytest.raises(ServiceError) as e:
        decode_frame(_image("GIF"), max_pixels=10_000)
    assert e.value.status == 415
    # a PNG whose header declares 20000 x 20000 (valid CRC), 60 bytes long: refused from the header
    png = bytearray(_png(4, 4))
    struct.pack_into(">II", png, 16, 20000, 20000)
    struct.pack_into(">I", png, 29, zlib.crc32(bytes(png[12:29])))
    with pytest.raises(ServiceError) as e:
        decode_frame(bytes(png), max_pixels=7680 * 4320)
    assert e.value.status == 413
    jpeg = _image("JPEG")
    with pytest.raises(ServiceError) as e:
        decode_frame(jpeg[: len(jpeg) // 2], max_pixels=10_000)
    assert e.value.status == 422
    assert Image.open(io.BytesIO(jpeg)).size == (32, 24)


def test_serve_config_refuses_what_cannot_work():
    assert serve_config().crop.num_cpus == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        serve_config({"modle": "x"})
    with pytest.raises(ConfigError, match="URI prefix"):
        serve_config({"allow_uri_prefixes": ["/data/videos"]})
    with pytest.raises(ConfigError, match="never fill a batch"):
        serve_config({"batch": {"max_batch_size": 32}, "features": {"max_ongoing_requests": 8}})
    with pytest.raises(ConfigError, match="min_replicas"):
        serve_config({"crop": {"min_replicas": 3, "max_replicas": 2}})


def test_byte_sizes_on_the_command_line():
    import argparse

    from raydf.cli import _byte_size

    assert _byte_size("268435456") == 256 << 20
    assert _byte_size("256M") == _byte_size("256MiB") == 256 << 20
    assert _byte_size("1G") == 1 << 30 and _byte_size("2k") == 2048
    with pytest.raises(argparse.ArgumentTypeError):
        _byte_size("lots")


def test_raydf_serve_refuses_a_missing_token_file_before_starting_anything(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "raydf.cli", "serve", "--model", str(tmp_path / "m.pt"), "--token-file",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**__import__("os").environ, "HOME": str(tmp_path), "PYTHONPATH": str(REPO)})  # fmt: skip
    assert proc.returncode == 2 and "token file" in proc.stderr and "missing" in proc.stderr
    assert not (tmp_path / ".ray").exists()  # no Ray was started


def test_the_page_ships_with_the_package():
    import tomllib
    from importlib import resources

    from raydf.serve.app import STATIC_FILES

    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["raydf"]
    root = resources.files("raydf.serve") / "static"
    for name in STATIC_FILES:
        assert (root / name).is_file()
        assert any(Path(f"serve/static/{name}").match(pattern) for pattern in data), name


def test_a_model_slot_loads_at_once_when_its_bundle_appears_within_the_retry_interval(tmp_path):
    """Each stage's replica has its own slot: all must serve from the first request after the model
    appears, not one now and the other ``model_retry_s`` later (a 200 from /v1/model, then a 503)."""
    from raydf.bundle import NoModelError
    from raydf.serve.app import ModelSlot

    model = tmp_path / "model" / "raydf_model.pt"
    slot = ModelSlot(serve_config({"model": str(model), "model_retry_s": 3600}), load_extractors=False, threads=1)
    assert not slot.loaded
    with pytest.raises(NoModelError, match="model not found"):
        slot.get()  # within the retry interval, nothing changed: the kept answer
    make_bundle(model)
    assert slot.get().bundle.num_frames == NUM_FRAMES and slot.loaded


def test_fit_to_cluster_scales_logical_cpus_only():
    from raydf.serve.runner import fit_to_cluster

    cfg = serve_config({"crop": {"num_cpus": 2, "threads": 2}, "features": {"num_cpus": 2, "threads": 3}})
    small = fit_to_cluster(cfg, 2.0)
    assert small.crop.num_cpus + small.features.num_cpus + small.ingress.num_cpus <= 2.0
    assert (small.crop.torch_threads, small.features.torch_threads) == (2, 3)  # the threads stay
    assert fit_to_cluster(cfg, 8.0) is cfg


# ---- the cluster's Serve config -------------------------------------------------------------------------------
def test_serve_yaml_is_a_valid_serve_config_that_places_each_stage_on_its_node_type():
    from ray.serve._private.build_app import build_app
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(SERVE_YAML.read_text())
    schema = ServeDeploySchema.model_validate(raw)  # Ray Serve's own schema (what `serve deploy` checks)
    (app,) = schema.applications
    assert app.import_path == "raydf.serve.app:app_builder" and app.route_prefix == "/"
    assert schema.proxy_location.value == "HeadOnly" and schema.http_options.host == "127.0.0.1"
    cfg = serve_config(app.args)  # raydf's own check of the args
    assert cfg.token_file and cfg.allow_uri_prefixes and all(p.startswith("s3://") for p in cfg.allow_uri_prefixes)

    cluster = load_yaml(CLUSTER_YAML)
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]

    def hosts(resources: dict, num_cpus: float, num_gpus: float) -> list[str]:
        """Worker node types that advertise every custom resource asked for, and enough CPUs and GPUs."""
        return [name for name, t in types.items() if name != cluster["head_node_type"]
                and all(custom_resources(t).get(k, 0) >= v for k, v in resources.items())
                and t["resources"].get("CPU", 0) >= num_cpus and t["resources"].get("GPU", 0) >= num_gpus]  # fmt: skip

    assert hosts(cfg.crop.resources, cfg.crop.num_cpus, cfg.crop.num_gpus) == ["cpu_worker"]
    assert cfg.crop.num_gpus == 0
    gpu_hosts = hosts(cfg.features.resources, cfg.features.num_cpus, cfg.features.num_gpus)
    assert gpu_hosts and all("v100" in h for h in gpu_hosts) and cfg.features.num_gpus == 1
    assert cfg.ingress.resources == {"node:__internal_head__": 0.001} and cfg.ingress.num_cpus <= head["resources"].get("CPU", 0)
    assert cfg.features.max_ongoing_requests >= cfg.batch.max_batch_size
    per_node = types["cpu_worker"]["resources"]["CPU"] // cfg.crop.num_cpus
    assert cfg.crop.max_replicas <= per_node * types["cpu_worker"]["max_workers"]
    gpus = sum(t["resources"].get("GPU", 0) * t["max_workers"] for n, t in types.items() if n in gpu_hosts)
    assert cfg.features.max_replicas <= gpus

    # The application the builder makes carries those options into Serve's deployments.
    built = build_app(__import__("raydf.serve.app", fromlist=["app_builder"]).app_builder(app.args), name=app.name)
    deps = {d.name: d for d in built.deployments}
    assert set(deps) == {"ingress", "crop", "features"} and built.ingress_deployment_name == "ingress"
    for name, r in (("crop", cfg.crop), ("features", cfg.features), ("ingress", cfg.ingress)):
        d = deps[name]
        assert d.ray_actor_options["num_cpus"] == r.num_cpus and d.ray_actor_options["num_gpus"] == r.num_gpus
        assert d.ray_actor_options.get("resources", {}) == r.resources
        auto = d._deployment_config.autoscaling_config
        assert (auto.min_replicas, auto.max_replicas, auto.target_ongoing_requests) == (r.min_replicas, r.max_replicas, r.target_ongoing_requests)
        assert d.max_ongoing_requests == r.max_ongoing_requests


# ---- the running service ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def clips(work) -> dict[str, Path]:
    return generated_clips(work / "clips", videos=3, seed=21)


@pytest.fixture(scope="module")
def service(work, request):
    """``raydf serve`` with a token and a model path that exists only once the no-model answers are recorded."""
    model = work / "model" / "raydf_model.pt"
    allowed = work / "allowed"
    allowed.mkdir()
    with sigterm_as_interrupt():
        svc = start_service(work / "svc", model=model, args=("--allow-uri-prefix", f"file://{allowed}/", "--max-bytes", str(MAX_BYTES)),
                            wait_s=0)  # fmt: skip
        try:
            clips = request.getfixturevalue("clips")  # generated while the service starts
            shutil.copy(clips["fake/0000_blend.mp4"], allowed / "clip.mp4")
            svc.ready(420)
            clip = clips["real/0000.mp4"]
            svc.extra["before"] = {
                "health": requests.get(f"{svc.url}/healthz", timeout=30).json(),
                "model": requests.get(f"{svc.url}/v1/model", headers=svc.headers(), timeout=30),
                "detect": svc.detect(clip),
                "stream": asyncio.run(_stream_until_closed(svc, [])),
            }
            make_bundle(model)
            svc.extra["model_info"] = svc.wait_model(60)
            svc.extra.update(model=model, allowed=allowed)
            yield svc
        finally:
            svc.stop()


def _error_of(resp: requests.Response) -> dict:
    body = resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"status", "message"}
    assert body["error"]["status"] == resp.status_code
    assert "Traceback" not in resp.text and 'File "' not in resp.text
    return body["error"]


async def _stream_until_closed(svc, frames: list[tuple[float, bytes]], *, every: int = 4, subprotocol_token: bool = True,
                               first_message_token: str | None = None, extra: list = ()) -> list[dict]:  # fmt: skip
    """Stream frames (time, JPEG) over /v1/stream and collect every JSON message until the server closes."""
    import websockets

    protocols = ["raydf.stream.v1"] + ([f"raydf.token.{svc.token}"] if subprotocol_token and svc.token else [])
    out: list[dict] = []
    async with websockets.connect(f"{svc.ws_url}/v1/stream", subprotocols=protocols, max_size=None, open_timeout=60) as ws:
        out.append({"type": "_subprotocol", "value": ws.subprotocol})
        if first_message_token is not None:
            await ws.send(json.dumps({"type": "auth", "token": first_message_token}))

        async def receive() -> None:
            try:
                async for msg in ws:
                    out.append({**json.loads(msg), "_at": time.perf_counter()})
            except websockets.ConnectionClosed:
                pass
            out.append({"type": "_closed", "code": ws.close_code})

        rx = asyncio.create_task(receive())
        try:
            await ws.send(json.dumps({"type": "start", "every": every, "name": "test-stream"}))
            for item in extra:
                await ws.send(item)
            for t, jpeg in frames:
                await ws.send(json.dumps({"type": "frame", "time_s": t}))
                await ws.send(jpeg)
                await asyncio.sleep(1 / 25)  # as the clip plays
            await ws.send(json.dumps({"type": "end"}))
        except websockets.ConnectionClosed:
            pass
        await asyncio.wait_for(rx, timeout=300)
    return out


def _jpeg_frames(path: Path) -> list[tuple[float, bytes]]:
    import av
    import cv2

    out = []
    with av.open(str(path)) as c:
        for f in c.decode(video=0):
            ok, buf = cv2.imencode(".jpg", f.to_ndarray(format="bgr24"), [cv2.IMWRITE_JPEG_QUALITY, 90])
            out.append((float(f.time), buf.tobytes()))
    return out


@pytest.mark.slow
@pytest.mark.integration
def test_without_a_model_the_service_answers_503_then_serves_once_it_appears(service):
    before = service.extra["before"]
    assert before["health"]["status"] == "ok" and before["health"]["model_loaded"] is False
    assert before["health"]["auth_required"] is True
    for what in ("model", "detect"):
        err = _error_of(before[what])
        assert err["status"] == 503 and "no model" in err["message"] and str(service.extra["model"]) in err["message"]
        assert before[what].headers.get("retry-after")
    errors = [m for m in before["stream"] if m["type"] == "error"]
    assert errors and errors[0]["status"] == 503 and before["stream"][-1]["code"] == 4503
    info = service.extra["model_info"]
    assert info["num_frames"] == NUM_FRAMES and info["model"]["source"] == str(service.extra["model"])
    assert info["model"]["warning"]  # a random-init model says its scores mean nothing
    assert requests.get(f"{service.url}/healthz", timeout=30).json()["model_loaded"] is True


@pytest.mark.slow
@pytest.mark.integration
def test_an_upload_answers_the_documented_detect_json(service, clips):
    resp = service.detect(clips["fake/0001_flicker.mp4"])
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert set(out) == DETECT_KEYS and out["schema"] == "raydf.detect/1"
    assert out["video"] == "0001_flicker.mp4" and 0.0 <= out["fake_probability"] <= 1.0
    assert out["label"] == ("fake" if out["fake_probability"] >= out["threshold"] else "real")
    assert set(out["model"]) == {"source", "provenance", "precision", "warning"} and out["model"]["warning"]
    assert len(out["frames"]) == NUM_FRAMES and out["faces"]
    for face in out["faces"]:
        assert len(face["boxes"]) == len(face["valid"]) == len(face["probs"]) == NUM_FRAMES
        assert all((b is None) == (not v) for b, v in zip(face["boxes"], face["valid"]))
    times = [f["time_s"] for f in out["frames"]]
    assert times == sorted(times) and all(set(f) == {"index", "time_s", "face_valid", "evidence"} for f in out["frames"])
    assert out["explanation"] is None
    for key in ("decode_s", "faces_s", "content_s", "style_s", "crop_s", "queue_s", "features_s", "batch_size", "total_s"):
        assert out["timings"][key] >= 0, key


@pytest.mark.slow
@pytest.mark.integration
def test_the_service_scores_a_clip_exactly_as_raydf_detect_does(service, clips, work):
    clip = clips["fake/0000_blend.mp4"]
    served = service.detect(clip).json()
    console = cli_detect(clip, service.extra["model"], work / "svc" / "home")
    assert abs(served["fake_probability"] - console["fake_probability"]) <= 1e-5
    assert served["label"] == console["label"] and served["model"] == {**console["model"]}
    assert [f["index"] for f in served["frames"]] == [f["index"] for f in console["frames"]]
    assert [f["time_s"] for f in served["frames"]] == [f["time_s"] for f in console["frames"]]
    for a, b in zip(served["faces"], console["faces"]):
        assert a["valid"] == b["valid"] and abs(a["fake_probability"] - b["fake_probability"]) <= 1e-5
        assert all((x is None and y is None) or np.allclose(x, y, atol=0.01) for x, y in zip(a["boxes"], b["boxes"]))
    np.testing.assert_allclose([f["evidence"] or 0 for f in served["frames"]], [f["evidence"] or 0 for f in console["frames"]], atol=1e-5)


@pytest.mark.slow
@pytest.mark.integration
def test_uri_raw_bytes_and_a_wrong_declared_type_score_like_the_upload(service):
    path = service.extra["allowed"] / "clip.mp4"
    upload = service.detect(path).json()["fake_probability"]
    by_uri = requests.post(f"{service.url}/v1/detect", json={"uri": f"file://{path}"}, headers=service.headers(), timeout=300)
    assert by_uri.status_code == 200, by_uri.text
    raw = requests.post(f"{service.url}/v1/detect", data=path.read_bytes(), timeout=300,
                        headers={**service.headers(), "Content-Type": "application/octet-stream", "X-Filename": "clip.mp4"})  # fmt: skip
    assert raw.status_code == 200, raw.text
    with open(path, "rb") as f:  # declared a PNG: the bytes decide
        as_png = requests.post(f"{service.url}/v1/detect", files={"video": ("clip.png", f, "image/png")}, headers=service.headers(), timeout=300)
    assert as_png.status_code == 200, as_png.text
    for resp in (by_uri, raw, as_png):
        assert abs(resp.json()["fake_probability"] - upload) <= 1e-5
    assert by_uri.json()["video"] == f"file://{path}" and raw.json()["video"] == "clip.mp4"


@pytest.mark.slow
@pytest.mark.integration
def test_explain_is_asked_per_request(service, clips):
    resp = service.detect(clips["real/0001.mp4"], params={"explain": "true"})
    assert resp.status_code == 200 and "explanation" in resp.json()
    bad = service.detect(clips["real/0001.mp4"], params={"explain": "maybe"})
    assert _error_of(bad)["status"] == 400


def _bad_requests(work: Path, clips: dict[str, Path], allowed: Path) -> dict[str, tuple[int, dict]]:
    """name -> (expected status, requests.request kwargs); 20+ ways to get a request wrong."""
    clip = clips["fake/0000_blend.mp4"].read_bytes()
    mp4 = lambda data, name="clip.mp4", ctype="video/mp4": {"files": {"video": (name, data, ctype)}}  # noqa: E731
    huge = write_declared_size_vp8(work / "16k.webm", 15360, 8640).read_bytes()
    audio = write_audio_only(work / "audio.mp4").read_bytes()
    rng = np.random.default_rng(1)
    garbled = clip[:32] + rng.integers(0, 256, 20_000, dtype=np.uint8).tobytes()  # an ftyp header, then noise
    over = clip[:64] + bytes(MAX_BYTES + 1024)
    return {
        "empty request": (400, {}),
        "multipart without a video field": (400, {"files": {"clip": ("clip.mp4", clip, "video/mp4")}}),
        "video field as text": (400, {"data": {"video": "clip.mp4"}, "files": {"other": ("x", b"x")}}),
        "json without uri": (400, {"json": {"url": "s3://x/y.mp4"}}),
        "malformed json": (400, {"data": b'{"uri": ', "headers": {"Content-Type": "application/json"}}),
        "no token": (401, {**mp4(clip), "token": ""}),
        "bad token": (401, {**mp4(clip), "token": "not-the-token"}),
        "uri not allowed": (403, {"json": {"uri": "file:///etc/passwd"}}),
        "uri escaping the prefix": (403, {"json": {"uri": f"file://{allowed}/../model/raydf_model.pt"}}),
        "uri in a sibling folder": (403, {"json": {"uri": f"file://{str(allowed).rstrip('/')}-other/clip.mp4"}}),
        "upload over the size limit": (413, mp4(over)),
        "raw body over the size limit": (413, {"data": over, "headers": {"Content-Type": "application/octet-stream"}}),
        "huge declared frame size": (413, mp4(huge, "16k.webm", "video/webm")),
        "text as video": (415, mp4(b"this is not a video\n" * 100, "notes.mp4")),
        "png as video": (415, mp4(_png(64, 48), "frame.mp4")),
        "wrong request content type": (415, {"data": b"hello", "headers": {"Content-Type": "text/plain"}}),
        "empty video file": (422, mp4(b"")),
        "truncated mp4": (422, mp4(clip[: len(clip) // 3])),
        "garbled mp4": (422, mp4(garbled)),
        "audio-only mp4": (422, mp4(audio, "audio.mp4")),
        "allowed uri that does not exist": (422, {"json": {"uri": f"file://{allowed}/missing.mp4"}}),
        "wrong method": (405, {"method": "GET"}),
    }


BAD_NAMES = ["empty request", "multipart without a video field", "video field as text", "json without uri", "malformed json",
             "no token", "bad token", "uri not allowed", "uri escaping the prefix", "uri in a sibling folder",
             "upload over the size limit", "raw body over the size limit", "huge declared frame size", "text as video",
             "png as video", "wrong request content type", "empty video file", "truncated mp4", "garbled mp4",
             "audio-only mp4", "allowed uri that does not exist", "wrong method"]  # fmt: skip


@pytest.fixture(scope="module")
def bad_requests(service, work, clips):
    return _bad_requests(work, clips, service.extra["allowed"])


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.parametrize("name", BAD_NAMES)
def test_a_bad_request_gets_its_status_and_a_json_error(service, bad_requests, name):
    expected, kwargs = bad_requests[name]
    kwargs = dict(kwargs)
    method = kwargs.pop("method", "POST")
    token = kwargs.pop("token", None)
    headers = {**service.headers(token), **kwargs.pop("headers", {})}
    resp = requests.request(method, f"{service.url}/v1/detect", headers=headers, timeout=300, **kwargs)
    err = _error_of(resp)
    assert resp.status_code == expected, (name, err)
    assert err["message"]
    if expected == 401:
        assert resp.headers.get("www-authenticate", "").startswith("Bearer")


@pytest.mark.slow
@pytest.mark.integration
def test_after_the_bad_requests_the_service_is_healthy_and_still_scores(service, bad_requests, clips):
    for name in BAD_NAMES:  # again, all of them, then a good one
        expected, kwargs = bad_requests[name]
        kwargs = dict(kwargs)
        method, token = kwargs.pop("method", "POST"), kwargs.pop("token", None)
        headers = {**service.headers(token), **kwargs.pop("headers", {})}
        assert requests.request(method, f"{service.url}/v1/detect", headers=headers, timeout=300, **kwargs).status_code == expected
    health = requests.get(f"{service.url}/healthz", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert service.detect(clips["real/0000.mp4"]).status_code == 200
    assert service.proc.poll() is None
    assert _error_of(requests.get(f"{service.url}/nowhere", timeout=30))["status"] == 404


@pytest.mark.slow
@pytest.mark.integration
def test_the_page_and_its_assets_load_without_a_token_and_from_nowhere_else(service):
    page = requests.get(f"{service.url}/", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        r = requests.get(f"{service.url}{asset}", timeout=30)
        assert r.status_code == 200 and asset.rsplit("/", 1)[1] in page.text
        assert "http://" not in r.text and "https://" not in r.text and "//cdn" not in r.text
    assert "http://" not in page.text and "https://" not in page.text
    assert requests.get(f"{service.url}/static/../app.py", timeout=30).status_code == 404
    assert _error_of(requests.get(f"{service.url}/static/secrets.txt", timeout=30))["status"] == 404
    assert _error_of(requests.get(f"{service.url}/v1/model", timeout=30))["status"] == 401


@pytest.mark.slow
@pytest.mark.integration
def test_live_stream_scores_a_rolling_window_every_k_frames(service, clips):
    frames = _jpeg_frames(clips["fake/0001_flicker.mp4"])
    every = 4
    msgs = asyncio.run(_stream_until_closed(service, frames, every=every))
    assert msgs[0] == {"type": "_subprotocol", "value": "raydf.stream.v1"}  # the token itself is never echoed
    ready = next(m for m in msgs if m["type"] == "ready")
    assert ready["window"] == NUM_FRAMES and ready["every"] == every
    scores = [m for m in msgs if m["type"] == "score"]
    done = next(m for m in msgs if m["type"] == "done")
    assert not [m for m in msgs if m["type"] == "error"]
    assert done["frames_received"] == len(frames) and done["updates"] == len(scores) >= 2
    due = len(frames) // every
    assert done["updates"] + done["skipped"] in (due, due + 1)  # every due update ran or collapsed; + the final window
    for s in scores:
        assert 0.0 <= s["fake_probability"] <= 1.0 and s["latency_s"] > 0
        w = s["window"]
        assert w["last"] == s["frames_received"] - 1 and w["frames"] == NUM_FRAMES
        assert w["last"] - w["first"] == min(NUM_FRAMES, s["frames_received"]) - 1
        assert w["end_s"] == pytest.approx(frames[w["last"]][0])
    assert scores[-1]["frames_received"] == len(frames)  # the end scored the last window
    assert msgs[-1] == {"type": "_closed", "code": 1000}
    lat = [s["latency_s"] for s in scores]
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_stream_latency.json").write_text(json.dumps({"every": every, "window": NUM_FRAMES, "frames": len(frames),
                                                                     "updates": len(scores), "latency_s": lat}, indent=1))  # fmt: skip


@pytest.mark.slow
@pytest.mark.integration
def test_live_stream_needs_the_token_and_survives_a_bad_frame(service, clips):
    frames = _jpeg_frames(clips["real/0001.mp4"])[:NUM_FRAMES]
    refused = asyncio.run(_stream_until_closed(service, frames, subprotocol_token=False, first_message_token="wrong"))
    assert [m["status"] for m in refused if m["type"] == "error"] == [401] and refused[-1]["code"] == 4401
    assert not [m for m in refused if m["type"] in ("ready", "score")]
    # the token as the first message (a client that cannot use subprotocols), and a frame that is no image
    ok = asyncio.run(_stream_until_closed(service, frames, subprotocol_token=False, first_message_token=service.token,
                                          every=NUM_FRAMES, extra=[b"not a jpeg"]))  # fmt: skip
    errors = [m for m in ok if m["type"] == "error"]
    scores = [m for m in ok if m["type"] == "score"]
    assert scores, ok  # the stream went on
    assert [e["status"] for e in errors] == [415]  # refused as it arrived
    assert next(m for m in ok if m["type"] == "done")["frames_received"] == len(frames)  # and kept out of the window


# ---- load: 16 requests, 4 at a time --------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.integration
def test_sixteen_concurrent_requests_all_succeed_and_match_single_requests(service, clips):
    order = sorted(clips)  # 6 clips of 1 to 40 frames
    jobs = [clips[order[i % len(order)]] for i in range(16)]
    alone = {p: service.detect(p).json()["fake_probability"] for p in set(jobs)}  # one at a time (batch of 1)

    def one(path: Path) -> tuple[float, requests.Response]:
        t0 = time.perf_counter()
        r = service.detect(path)
        return time.perf_counter() - t0, r

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(one, jobs))
    wall = time.perf_counter() - t0
    failures = [(p.name, r.status_code, r.text[:200]) for p, (_, r) in zip(jobs, results) if r.status_code != 200]
    assert not failures
    for p, (_, r) in zip(jobs, results):
        assert abs(r.json()["fake_probability"] - alone[p]) <= 1e-5  # batching changes no answer
    batches = [r.json()["timings"]["batch_size"] for _, r in results]
    assert max(batches) >= 2  # concurrent requests shared feature batches
    lat = sorted(t for t, _ in results)
    report = {"requests": 16, "concurrency": 4, "wall_s": wall, "throughput_rps": 16 / wall,
              "p50_s": float(np.percentile(lat, 50)), "p95_s": float(np.percentile(lat, 95)), "batch_sizes": batches}  # fmt: skip
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "serve_load.json").write_text(json.dumps(report, indent=1))
    assert requests.get(f"{service.url}/healthz", timeout=30).json()["status"] == "ok"
    assert math.isfinite(report["p95_s"])
