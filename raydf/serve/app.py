"""The Ray Serve application: an HTTP/WebSocket ingress and two deployments shaped like the pipeline.

::

    client ──► proxy ──► Ingress (FastAPI)          auth, size caps, sniffing, routes, the page
                          │ bytes / uri / frames
                          ▼
                         CropDeployment (CPU)        decode + sample T frames + MTCNN face tracks
                          │ crop rows (uint8 crops), object store, not through the ingress
                          ▼
                         FeatureDeployment (GPU/CPU) @serve.batch: crop rows of several requests
                                                     through content + style extractors at once,
                                                     then the fusion classifier per request

Each half is :class:`raydf.detect.Detector`'s own (``crop`` / ``crop_frames``, then
:class:`raydf.extract.FeatureStage` ``rows`` and ``Detector.score``), so a clip's probability
is the one ``raydf detect`` prints for the same file and model. Each deployment has its own
``ray_actor_options`` and ``autoscaling_config`` (:class:`raydf.serve.config.ReplicaConfig`).

HTTP API (errors: :mod:`raydf.serve.errors`; streaming: :mod:`raydf.serve.stream`):

* ``POST /v1/detect`` -- multipart ``video`` (file) [+ ``explain``], JSON ``{"uri": ..., "explain": ..}``,
  or the raw bytes as ``application/octet-stream`` / ``video/*``; answers the
  :class:`raydf.detect.DetectResult` JSON (schema ``raydf.detect/1``). ``?explain=true`` also works.
* ``GET /v1/model`` -- the model's source, provenance, precision, warning, T and threshold.
* ``GET /healthz`` -- liveness of both deployments and whether a model is loaded (no token needed).
* ``WS /v1/stream`` -- live scoring of streamed frames.
* ``GET /`` and ``/static/*`` -- the page (no token needed to load it; it asks for one).
"""

# No ``from __future__ import annotations`` here: Serve pickles the ingress class by value, and FastAPI
# must find ``Request``/``WebSocket`` in its annotations as objects, not as names to look up.
import asyncio
import hmac
import json
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, WebSocket
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from ray import serve
from ray.serve import Application
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.websockets import WebSocketDisconnect

from raydf import schema as S
from raydf.serve.config import MAX_JSON_BYTES, ServeConfig, serve_config
from raydf.serve.errors import ServiceError, error_body, status_of
from raydf.serve.media import SNIFF_BYTES, sniff_container
from raydf.serve.stream import SUBPROTOCOL, TOKEN_PROTOCOL_PREFIX, RollingWindow, WindowSnapshot, check_frame, decode_frame

log = logging.getLogger(__name__)

__all__ = ["CropOutcome", "ModelSlot", "CropDeployment", "FeatureDeployment", "Ingress", "build_app", "app_builder", "APP_NAME"]

APP_NAME = "raydf"
MULTIPART_OVERHEAD = 64 * 1024  # boundaries and part headers around the upload
STATIC_FILES = {"index.html": "text/html; charset=utf-8", "app.js": "text/javascript; charset=utf-8",
                "style.css": "text/css; charset=utf-8"}  # fmt: skip
# The page loads nothing from elsewhere: scripts, styles and connections to this origin only;
# images and video from blob:/data: URLs the page makes itself.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'")  # fmt: skip
_AUTH_WAIT_S = 10.0  # a WebSocket without a token in its handshake has this long to send {"type": "auth"}


# ---- what travels between the deployments ------------------------------------------------------------
@dataclass(frozen=True)
class CropOutcome:
    """The crop deployment's answer for one request: crop rows, or the error that stopped it."""

    key: str  # unique per request: the video_id of its rows (rows of a batch are told apart by it)
    rows: list[dict[str, Any]] | None = None
    error: tuple[int, str] | None = None  # (HTTP status, message)
    timings: dict[str, float] = field(default_factory=dict)
    done_at: float = 0.0  # time.time() when cropping ended (queue time in the feature deployment)


class ModelSlot:
    """A replica's :class:`~raydf.detect.Detector`, loaded once.

    With no model yet (the path does not exist, the tracking store has no trained model), the
    slot looks again at most every ``cfg.model_retry_s`` seconds, and requests meanwhile get
    503 -- unless what it looks at changed since (a bundle path or a sqlite store that appeared or
    was written, a ``stat`` per request), when it looks at once: every replica of every stage then
    serves from the first request after the model appears, whichever replica answered ``/v1/model``.
    Once loaded, the model stays (a service does not swap models under its clients).
    """

    def __init__(self, cfg: ServeConfig, *, load_extractors: bool, threads: int) -> None:
        self.cfg, self.load_extractors, self.threads = cfg, load_extractors, threads
        self._det: Any = None
        self._last_try = -float("inf")
        self._last_error: BaseException | None = None
        self._last_seen: tuple | None = None
        try:
            self.get()
        except Exception as exc:  # noqa: BLE001 - kept and re-raised to requests (503)
            log.warning("no model yet: %s", exc)

    @property
    def loaded(self) -> bool:
        return self._det is not None

    def get(self) -> Any:
        """The Detector. Raises NoModelError / BundleError (a 503) while there is none."""
        if self._det is not None:
            return self._det
        now = time.monotonic()
        seen = _model_source_state(self.cfg.model, self.cfg.tracking_uri)
        if now - self._last_try < self.cfg.model_retry_s and self._last_error is not None and seen == self._last_seen:
            raise _fresh(self._last_error)
        self._last_try, self._last_seen = now, seen
        import torch

        from raydf.detect import Detector

        try:
            det = Detector.from_model(self.cfg.model, tracking_uri=self.cfg.tracking_uri, style_weights=self.cfg.style_weights,
                                      content_weights=self.cfg.content_weights, load_extractors=self.load_extractors)  # fmt: skip
        except Exception as exc:
            self._last_error = exc
            raise
        torch.set_num_threads(self.threads)  # the stages set every core; a replica owns num_cpus of them
        self._det, self._last_error = det, None
        log.info("model loaded: %s (%.1fs)", det.source, det.load_s)
        return det


def _model_source_state(model: str | None, tracking_uri: str | None) -> tuple | None:
    """What a ``stat`` tells of the model's source (:func:`raydf.bundle.model_source_file`):
    (exists, size, mtime_ns); None where no local file tells (an MLflow server, ``runs:/`` URIs)."""
    from raydf.bundle import model_source_file

    path = model_source_file(model, tracking_uri)
    if path is None:
        return None
    try:
        st = path.stat()
    except OSError:
        return (False, 0, 0)
    return (True, st.st_size, st.st_mtime_ns)


def _fresh(exc: BaseException) -> BaseException:
    """A new exception like ``exc`` (re-raising one object again and again piles up its traceback)."""
    try:
        return type(exc)(str(exc))
    except Exception:  # noqa: BLE001 - an exception type with another signature
        return exc


def _model_summary(det: Any) -> dict[str, Any]:
    return {
        "model": asdict(det.model_info),
        "num_frames": det.bundle.num_frames,
        "threshold": det.bundle.threshold,
        "device": str(det.feature_stage.extractor.device),
        "feature_precision": det.precision,
        "max_pixels": det.cfg.video.max_pixels,
    }


# ---- the CPU half ------------------------------------------------------------------------------------
@serve.deployment(name="crop")
class CropDeployment:
    """Decode, sample and crop faces (CPU): ``Detector.crop`` / ``Detector.crop_frames``, one clip at a time."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.slot = ModelSlot(cfg, load_extractors=False, threads=cfg.crop.torch_threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crop")  # one clip at a time per replica

    async def ping(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        """Empty once this replica has the model; else the error body (503) it would answer."""
        try:
            self.slot.get()
        except Exception as exc:  # noqa: BLE001
            return status_of(exc).body()
        return {}

    async def crop(self, key: str, data: bytes | None = None, uri: str | None = None) -> CropOutcome:
        """Crop rows of an upload (``data``) or of the object at ``uri``."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._crop, key, data, uri)

    async def crop_stream(self, key: str, frames: tuple[bytes, ...], times: np.ndarray, indices: np.ndarray) -> CropOutcome:
        """Crop rows of a window of streamed frames (encoded images)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._crop_stream, key, frames, times, indices)

    def _crop(self, key: str, data: bytes | None, uri: str | None) -> CropOutcome:
        t0 = time.perf_counter()
        try:
            det = self.slot.get()
            read_s = 0.0
            if data is None:
                assert uri is not None
                data = read_capped(uri, self.cfg.max_bytes)
                read_s = time.perf_counter() - t0
            rows = det.crop(data, key)
        except Exception as exc:  # noqa: BLE001 - every failure becomes the request's error
            err = status_of(exc)
            return CropOutcome(key, error=(err.status, err.message), done_at=time.time())
        if read_s:
            rows[0][S.T_READ] = read_s
        return CropOutcome(key, rows=rows, timings={"crop_s": time.perf_counter() - t0}, done_at=time.time())

    def _crop_stream(self, key: str, frames: tuple[bytes, ...], times: np.ndarray, indices: np.ndarray) -> CropOutcome:
        t0 = time.perf_counter()
        try:
            det = self.slot.get()
            max_pixels = det.cfg.video.max_pixels
            decoded = [decode_frame(f, max_pixels=max_pixels) for f in frames]  # T x (H, W, 3) uint8
            rows = det.crop_frames(decoded, np.asarray(times, np.float64), key)
            for r in rows:  # crop_frames numbers frames 0..T-1; the stream's own positions are these
                r[S.FRAME_INDICES] = np.asarray(indices, np.int32)
        except Exception as exc:  # noqa: BLE001
            err = status_of(exc)
            return CropOutcome(key, error=(err.status, err.message), done_at=time.time())
        return CropOutcome(key, rows=rows, timings={"crop_s": time.perf_counter() - t0}, done_at=time.time())


def read_capped(uri: str, max_bytes: int) -> bytes:
    """The object at ``uri``, refused before reading it whole when over ``max_bytes`` or not a video container.

    Raises:
        ServiceError: 413 over the cap; 415 not a video container; 422 unreadable (missing, denied).
    """
    import fsspec

    from raydf.tracking import redact_uri

    shown = redact_uri(uri)
    try:
        fs, path = fsspec.core.url_to_fs(uri)
        size = fs.size(path)
        if size is not None and size > max_bytes:
            raise ServiceError(413, f"{shown} is {size:,} bytes, over the limit of {max_bytes:,}")
        with fs.open(path, "rb") as f:
            head = f.read(SNIFF_BYTES)
            if not head:
                raise ServiceError(422, f"{shown} is empty (0 bytes)")
            if sniff_container(head) is None:
                raise ServiceError(415, f"{shown} is not a video container this service reads")
            rest = f.read(max_bytes + 1 - len(head))
    except ServiceError:
        raise
    except Exception as exc:  # noqa: BLE001 - missing object, permissions, network
        raise ServiceError(422, f"cannot read {shown}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if len(head) + len(rest) > max_bytes:
        raise ServiceError(413, f"{shown} is over the limit of {max_bytes:,} bytes")
    return head + rest


# ---- the feature half ------------------------------------------------------------------------------------
@serve.deployment(name="features")
class FeatureDeployment:
    """Content + style features of several requests' crop rows at once (``@serve.batch``), then the classifier."""

    def __init__(self, cfg: ServeConfig) -> None:
        self.cfg = cfg
        self.slot = ModelSlot(cfg, load_extractors=True, threads=cfg.features.torch_threads)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="features")  # one pass at a time
        self.score_batch.set_max_batch_size(cfg.batch.max_batch_size)
        self.score_batch.set_batch_wait_timeout_s(cfg.batch.batch_wait_timeout_s)
        self._waiting: list[tuple[list[CropOutcome], list[str], list[bool], asyncio.Future]] = []
        self._draining = False

    async def ping(self) -> bool:
        return True

    async def info(self) -> dict[str, Any]:
        """The model's description, or an error body (503) while there is none."""
        try:
            return _model_summary(self.slot.get())
        except Exception as exc:  # noqa: BLE001
            return status_of(exc).body()

    async def score(self, outcome: CropOutcome, name: str, explain: bool = False) -> dict[str, Any]:
        """The DetectResult JSON of one request (or its error body); batched with concurrent requests."""
        return await self.score_batch(outcome, name, explain)

    # @serve.batch groups the requests that arrive within batch_wait_timeout_s of each other. Serve forms
    # the next batch while the previous one still runs (2.60: the batch is formed, then it waits for
    # its turn), so the groups that queue while the extractors are busy are merged here into one
    # pass of up to max_batch_size requests: a busy replica batches everything that waited for it.
    @serve.batch(max_batch_size=4, batch_wait_timeout_s=0.05, max_concurrent_batches=64)  # sizes: set from the config
    async def score_batch(self, outcomes: list[CropOutcome], names: list[str], explains: list[bool]) -> list[dict[str, Any]]:
        done: asyncio.Future = asyncio.get_running_loop().create_future()
        self._waiting.append((outcomes, names, explains, done))
        if not self._draining:
            self._draining = True
            asyncio.create_task(self._drain())
        return await done

    async def _drain(self) -> None:
        """One extractor pass at a time, each over as many waiting groups as fit in max_batch_size."""
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                take, n = [], 0
                while self._waiting and (not take or n + len(self._waiting[0][0]) <= self.cfg.batch.max_batch_size):
                    group = self._waiting.pop(0)
                    take.append(group)
                    n += len(group[0])
                flat = [sum((list(g[i]) for g in take), []) for i in range(3)]
                try:
                    results = await loop.run_in_executor(self._pool, self._score_many, *flat)
                except Exception as exc:  # noqa: BLE001 - _score_many turns failures into error bodies; this is a bug
                    results = [status_of(exc).body()] * n
                start = 0
                for outcomes, _, _, done in take:
                    if not done.done():
                        done.set_result(results[start : start + len(outcomes)])
                    start += len(outcomes)
        finally:
            self._draining = False

    def _score_many(self, outcomes: list[CropOutcome], names: list[str], explains: list[bool]) -> list[dict[str, Any]]:
        t0, wall0 = time.perf_counter(), time.time()
        try:
            det = self.slot.get()
        except Exception as exc:  # noqa: BLE001
            return [status_of(exc).body() for _ in outcomes]
        ok = [o for o in outcomes if o.error is None and o.rows]
        by_key: dict[str, list[dict[str, Any]]] = {}
        if ok:
            try:
                rows = det.feature_stage.rows([r for o in ok for r in o.rows])  # one pass of the extractors
            except Exception as exc:  # noqa: BLE001 - FeatureStage turns per-video failures into error rows
                err = status_of(exc)
                return [err.body() if o.error is None else error_body(*o.error) for o in outcomes]
            for r in rows:
                by_key.setdefault(r[S.VIDEO_ID], []).append(r)
        features_s = time.perf_counter() - t0
        out = []
        for o, name, explain in zip(outcomes, names, explains):
            if o.error is not None:
                out.append(error_body(o.error[0], o.error[1].replace(o.key, name)))
                continue
            rows = sorted(by_key.get(o.key, []), key=lambda r: r[S.TRACK_ID])
            try:
                if not rows or rows[0][S.STATUS] != S.STATUS_OK:
                    from raydf.extract import ExtractError

                    raise ExtractError(rows[0][S.ERROR] if rows else "no feature rows")
                timings = {**o.timings, "queue_s": max(0.0, wall0 - o.done_at), "features_s": features_s, "batch_size": float(len(ok))}
                result = det.score(rows, name, timings=timings, explain=explain, crop_rows=o.rows).to_dict()
            except Exception as exc:  # noqa: BLE001
                err = status_of(exc)
                out.append(error_body(err.status, err.message.replace(o.key, name)))
                continue
            out.append(result)
        return out


# ---- the ingress -----------------------------------------------------------------------------------------
api = FastAPI(title="raydf detection service", docs_url=None, redoc_url=None, openapi_url=None)


def _json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


@api.exception_handler(ServiceError)
async def _service_error(_: Request, exc: ServiceError) -> JSONResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="raydf"'} if exc.status == 401 else ({"Retry-After": "5"} if exc.status == 503 else None)
    return _json_error(exc.status, exc.message, headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
    return _json_error(exc.status_code, str(exc.detail))


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    return _json_error(400, f"bad request: {exc.errors()[:1]}")


@api.exception_handler(Exception)
async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
    err = status_of(exc)
    return _json_error(err.status, err.message)


def _read_token(path: str | None) -> str | None:
    if not path:
        return None
    token = Path(path).read_text().strip()
    if not token:
        raise ValueError(f"token file {path} is empty")
    return token


def _static_files() -> dict[str, bytes]:
    root = resources.files("raydf.serve") / "static"
    return {name: (root / name).read_bytes() for name in STATIC_FILES}


async def _read_body(request: Request, limit: int, what: str) -> bytes:
    """The request body, refused (413) as soon as it is known to exceed ``limit``: from Content-Length
    before reading anything, else while it streams in."""
    buf = bytearray()
    async for chunk in _capped(request, limit, what).stream():
        buf += chunk
    return bytes(buf)


def _capped(request: Request, limit: int, what: str) -> Request:
    """The same request, whose body stream raises 413 once more than ``limit`` bytes came in (checked
    against Content-Length first, before anything is read): a multipart upload is parsed as it
    streams, never held whole twice."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            n = int(declared)
        except ValueError as exc:
            raise ServiceError(400, f"bad Content-Length {declared!r}") from exc
        if n > limit:
            raise ServiceError(413, f"{what} of {n:,} bytes is over the limit of {limit:,}")
    seen = 0
    receive = request.receive

    async def counted() -> dict[str, Any]:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise ServiceError(413, f"{what} is over the limit of {limit:,} bytes")
        return message

    return Request(request.scope, counted)


def _flag(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ServiceError(400, f"explain must be true or false, got {value!r}")


def _display_name(filename: str | None) -> str:
    name = Path(filename or "upload").name or "upload"
    return "".join(c if c.isprintable() else "_" for c in name)[:200]


def uri_allowed(uri: str, prefixes: tuple[str, ...]) -> bool:
    """``uri`` lies under one of ``prefixes`` (a whole path segment; no ``..`` segments, no backslashes)."""
    if not isinstance(uri, str) or "\\" in uri or any(ord(c) < 32 for c in uri):
        return False
    if any(seg in ("..", ".") for seg in uri.split("://", 1)[-1].split("/")):
        return False
    for p in prefixes:
        base = p if p.endswith("/") else p + "/"
        if uri == p or uri.startswith(base):
            return True
    return False


class _StreamSession:
    """One WebSocket client: its rolling window and the update in flight (see :mod:`raydf.serve.stream`)."""

    def __init__(self, ingress: "Ingress", ws: WebSocket) -> None:
        self.ingress, self.ws = ingress, ws
        self.sid = uuid.uuid4().hex[:12]
        self.name = "stream"
        self.window: RollingWindow | None = None
        self.every = ingress.cfg.stream.every
        self.next_time: float | None = None
        self.task: asyncio.Task | None = None
        self.again = False  # an update came due while one was in flight
        self.updates = self.skipped = 0
        self.last_scored = 0  # frames received when the last update's window was taken
        self._send_lock = asyncio.Lock()

    async def send(self, obj: dict[str, Any]) -> None:
        async with self._send_lock:
            await self.ws.send_text(json.dumps(obj))

    async def error(self, status: int, message: str) -> None:
        await self.send({"type": "error", **error_body(status, message)["error"]})

    async def _authenticate(self, token: str | None) -> bool:
        ing = self.ingress
        if ing.token is None:
            return True
        header = ing._authorized(self.ws.headers.get("authorization"))
        if header or (token is not None and hmac.compare_digest(token.encode(), ing.token.encode())):
            return True
        if token is None:  # the token may come as the first message
            try:
                msg = await asyncio.wait_for(self.ws.receive_text(), timeout=_AUTH_WAIT_S)
                obj = json.loads(msg)
                given = obj.get("token") if isinstance(obj, dict) and obj.get("type") == "auth" else None
                if isinstance(given, str) and hmac.compare_digest(given.encode(), ing.token.encode()):
                    return True
            except (asyncio.TimeoutError, ValueError, KeyError, TypeError):
                pass
        await self.error(401, "this stream needs the service's token (subprotocol raydf.token.<token>, an Authorization header, "
                              'or a first message {"type": "auth", "token": ...})')  # fmt: skip
        await self.ws.close(code=4401)
        return False

    async def run(self, token: str | None) -> None:
        if not await self._authenticate(token):
            return
        info = await self.ingress.features.info.remote()
        if "error" in info:
            await self.error(info["error"]["status"], info["error"]["message"])
            await self.ws.close(code=4503)
            return
        self.threshold = info["threshold"]
        size = int(info["num_frames"])
        started = False
        cfg = self.ingress.cfg.stream
        while True:
            msg = await self.ws.receive()
            if msg["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(msg.get("code", 1000))
            if msg.get("text") is not None:
                try:
                    obj = json.loads(msg["text"])
                    kind = obj.get("type") if isinstance(obj, dict) else None
                except ValueError:
                    kind = None
                if kind == "start" and not started:
                    every = obj.get("every", self.every)
                    if not isinstance(every, int) or not 1 <= every <= 1024:
                        await self.error(400, f"every must be an integer in [1, 1024], got {every!r}")
                        continue
                    self.every = every
                    self.name = _display_name(str(obj.get("name") or "stream"))
                elif kind == "frame":
                    t = obj.get("time_s")
                    if not isinstance(t, (int, float)) or not np.isfinite(t):
                        await self.error(400, f"time_s must be a number, got {t!r}")
                        continue
                    self.next_time = float(t)
                    continue
                elif kind == "end":
                    await self._end()
                    return
                elif kind == "auth":
                    continue
                else:
                    await self.error(400, 'text messages are JSON: {"type": "start" | "frame" | "end", ...}')
                    continue
            if not started:
                started = True
                self.window = RollingWindow(size, self.every)
                await self.send({"type": "ready", "window": size, "every": self.every, "model": info["model"], "threshold": self.threshold})
            data = msg.get("bytes")
            if data is None:
                continue
            if len(data) > cfg.max_frame_bytes:
                await self.error(413, f"a frame of {len(data):,} bytes is over the limit of {cfg.max_frame_bytes:,}")
                continue
            assert self.window is not None
            t = self.next_time if self.next_time is not None else self.window.received / cfg.fps
            self.next_time = None
            try:
                check_frame(data, max_pixels=int(info["max_pixels"]))  # the header only: a bad frame never enters the window
            except ServiceError as exc:
                await self.error(exc.status, exc.message)
                continue
            if self.window.push(data, t, time.perf_counter()):
                self._schedule()

    def _schedule(self) -> None:
        if self.task is not None and not self.task.done():
            self.again = True
            self.skipped += 1
            return
        assert self.window is not None
        self.task = asyncio.create_task(self._update(self.window.snapshot()))

    async def _update(self, snap: WindowSnapshot) -> None:
        self.last_scored = snap.received
        key = f"{self.name}#{self.sid}-{snap.received}"
        outcome = self.ingress.crop.crop_stream.remote(key, snap.frames, snap.times, snap.indices)
        result = await self.ingress.features.score.remote(outcome, self.name, False)
        latency = time.perf_counter() - snap.newest_arrival
        if "error" in result:
            await self.error(result["error"]["status"], result["error"]["message"])
        else:
            self.updates += 1
            frames = result["frames"]
            await self.send({
                "type": "score", "fake_probability": result["fake_probability"], "label": result["label"],
                "threshold": result["threshold"], "frames_received": snap.received,
                "window": {"first": int(snap.indices.min()), "last": int(snap.indices.max()), "start_s": float(snap.times.min()),
                           "end_s": float(snap.times.max()), "frames": len(snap.frames)},
                "face_valid_fraction": float(np.mean([f["face_valid"] for f in frames])) if frames else 0.0,
                "latency_s": latency, "skipped": self.skipped,
                "timings": {k: result["timings"].get(k) for k in ("crop_s", "queue_s", "features_s", "batch_size")},
            })  # fmt: skip
        if self.again:  # the newest of the updates that came due meanwhile gets computed; the others were skipped
            self.again = False
            self.skipped -= 1
            assert self.window is not None
            self.task = asyncio.create_task(self._update(self.window.snapshot()))

    async def _end(self) -> None:
        while self.task is not None and not self.task.done():
            await self.task
        if self.window is not None and len(self.window) and self.window.received != self.last_scored:
            await self._update(self.window.snapshot())
        await self.send({"type": "done", "frames_received": self.window.received if self.window else 0,
                         "updates": self.updates, "skipped": self.skipped})  # fmt: skip
        await self.ws.close(code=1000)

    async def finish(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()


# A module-level route, not a method: Serve 2.60's class-based view strips ``self`` from HTTP routes
# but not from WebSocket routes under FastAPI >= 0.137 (``self`` stays a required query parameter
# and every handshake is refused with 403), so the route finds its replica's Ingress itself. It is
# registered before ``@serve.ingress(api)``, which freezes a copy of the app (and of the globals the
# Ingress class reads: everything it uses is defined above it).
@api.websocket("/v1/stream")
async def _stream_route(ws: WebSocket) -> None:
    await serve.get_replica_context().servable_object.stream(ws)


@serve.deployment(name="ingress")
@serve.ingress(api)
class Ingress:
    """HTTP and WebSocket routes; checks the token, caps and media type before anything heavy runs."""

    def __init__(self, crop: DeploymentHandle, features: DeploymentHandle, cfg: ServeConfig) -> None:
        self.crop, self.features, self.cfg = crop, features, cfg
        self.token = _read_token(cfg.token_file)
        self.static = _static_files()

    # -- auth --
    def _authorized(self, header: str | None) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer ") :].strip().encode(), self.token.encode())

    def _check_auth(self, request: Request) -> None:
        if not self._authorized(request.headers.get("authorization")):
            given = "no token" if not request.headers.get("authorization") else "a wrong token"
            raise ServiceError(401, f"this service needs a bearer token (Authorization: Bearer <token>); the request had {given}")

    # -- the page --
    def _static(self, name: str) -> Response:
        return Response(self.static[name], media_type=STATIC_FILES[name],
                        headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})  # fmt: skip

    @api.get("/")
    async def index(self) -> Response:
        return self._static("index.html")

    @api.get("/static/{name}")
    async def static_file(self, name: str) -> Response:
        if name not in STATIC_FILES or name == "index.html":
            raise ServiceError(404, f"no static file {name!r}")
        return self._static(name)

    # -- health and model --
    async def _model_info(self) -> dict[str, Any]:
        """The features stage's model summary once both stages have the model; else the first error body."""
        try:
            crop, info = await asyncio.gather(self.crop.info.remote(), self.features.info.remote())
        except Exception as exc:  # noqa: BLE001 - a replica down: no model to score with, for now
            return ServiceError(503, f"a stage did not answer: {type(exc).__name__}").body()
        return crop if "error" in crop else info

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        checks: dict[str, str] = {}
        for what, handle in (("crop", self.crop), ("features", self.features)):
            try:
                await asyncio.wait_for(handle.ping.remote(), timeout=10.0)
                checks[what] = "ok"
            except Exception as exc:  # noqa: BLE001 - a replica down or stuck
                checks[what] = f"{type(exc).__name__}"
        info = await self._model_info()
        healthy = all(v == "ok" for v in checks.values())
        body = {"status": "ok" if healthy else "degraded", "model_loaded": "error" not in info,
                "auth_required": self.token is not None, "deployments": checks}  # fmt: skip
        return JSONResponse(body, status_code=200 if healthy else 503)

    @api.get("/v1/model")
    async def model(self, request: Request) -> JSONResponse:
        self._check_auth(request)
        info = await self._model_info()
        if "error" in info:
            raise ServiceError(info["error"]["status"], info["error"]["message"])
        return JSONResponse({**info, "stream": {"every": self.cfg.stream.every, "window": info["num_frames"]},
                             "max_bytes": self.cfg.max_bytes})  # fmt: skip

    # -- detection --
    @api.post("/v1/detect")
    async def detect(self, request: Request) -> JSONResponse:
        t0 = time.perf_counter()
        self._check_auth(request)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        explain = _flag(request.query_params.get("explain"))
        data, uri, name = None, None, "upload"
        if ctype == "multipart/form-data":
            form = await _capped(request, self.cfg.max_bytes + MULTIPART_OVERHEAD, "the upload").form(max_files=1, max_fields=8)
            try:
                field_ = form.get("video")
                if field_ is None:
                    raise ServiceError(400, "missing field 'video': send the clip as multipart/form-data field 'video'")
                if isinstance(field_, str):
                    raise ServiceError(400, "field 'video' must be a file upload, not text")
                data, name = await field_.read(), _display_name(field_.filename)
                if explain is None:
                    explain = _flag(form.get("explain"))
            finally:
                await form.close()
            if len(data) > self.cfg.max_bytes:
                raise ServiceError(413, f"the upload of {len(data):,} bytes is over the limit of {self.cfg.max_bytes:,}")
        elif ctype == "application/json":
            body = await _read_body(request, MAX_JSON_BYTES, "the JSON body")
            try:
                obj = json.loads(body)
            except (ValueError, UnicodeDecodeError) as exc:
                raise ServiceError(400, f"the body is not valid JSON: {exc}") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("uri"), str) or not obj["uri"]:
                raise ServiceError(400, 'missing field "uri": send {"uri": "s3://bucket/clip.mp4"} or a multipart upload')
            uri = obj["uri"]
            if not uri_allowed(uri, self.cfg.allow_uri_prefixes):
                allowed = ", ".join(self.cfg.allow_uri_prefixes) or "none (start the service with --allow-uri-prefix)"
                raise ServiceError(403, f"uri is not under an allowed prefix; allowed: {allowed}")
            if explain is None:
                explain = _flag(obj.get("explain"))
            from raydf.tracking import redact_uri

            name = redact_uri(uri)
        elif ctype in ("application/octet-stream",) or ctype.startswith("video/"):
            data = await _read_body(request, self.cfg.max_bytes, "the upload")
            name = _display_name(request.headers.get("x-filename"))
        elif not ctype and request.headers.get("content-length", "0") == "0":
            raise ServiceError(400, "empty request: send the clip as multipart/form-data field 'video', or JSON {\"uri\": ...}")
        else:
            raise ServiceError(415, f"unsupported request type {ctype or '(none)'}: send multipart/form-data (field 'video'), "
                                    "application/json ({\"uri\": ...}) or the raw clip as application/octet-stream")  # fmt: skip
        if data is not None:
            if not data:
                raise ServiceError(422, f"{name} is empty (0 bytes): not a video")
            if sniff_container(data[:SNIFF_BYTES]) is None:
                raise ServiceError(415, f"{name} does not start like any video container (MP4/MOV, Matroska/WebM, AVI, "
                                        "MPEG-TS/PS, FLV, ASF/WMV, Ogg, ...)")  # fmt: skip
        upload_s = time.perf_counter() - t0
        key = f"{name}#{uuid.uuid4().hex[:12]}"
        outcome = self.crop.crop.remote(key, data, uri)
        result = await self.features.score.remote(outcome, name, bool(self.cfg.explain if explain is None else explain))
        if "error" in result:
            raise ServiceError(result["error"]["status"], result["error"]["message"])
        result["timings"].update(upload_s=upload_s, total_s=time.perf_counter() - t0, load_s=0.0)
        return JSONResponse(result)

    # -- live scoring (routed by :func:`_stream_route`) --
    async def stream(self, ws: WebSocket) -> None:
        offered = list(ws.scope.get("subprotocols") or [])
        token = next((p[len(TOKEN_PROTOCOL_PREFIX) :] for p in offered if p.startswith(TOKEN_PROTOCOL_PREFIX)), None)
        await ws.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
        session = _StreamSession(self, ws)
        try:
            await session.run(token)
        except WebSocketDisconnect:
            pass
        finally:
            await session.finish()


# ---- building the application ------------------------------------------------------------------------------
def build_app(cfg: ServeConfig) -> Application:
    """The Serve application for ``cfg``: ingress -> crop -> features, each with its resources and autoscaling."""

    def opts(r: Any) -> dict[str, Any]:
        return {"ray_actor_options": r.actor_options(), "autoscaling_config": r.autoscaling(), "max_ongoing_requests": r.max_ongoing_requests}

    crop = CropDeployment.options(**opts(cfg.crop)).bind(cfg)
    features = FeatureDeployment.options(**opts(cfg.features)).bind(cfg)
    return Ingress.options(**opts(cfg.ingress)).bind(crop, features, cfg)


def app_builder(args: dict[str, Any]) -> Application:
    """The application builder a Serve config names (``import_path: raydf.serve.app:app_builder``); ``args``
    are :class:`~raydf.serve.config.ServeConfig`'s keys."""
    return build_app(serve_config(dict(args or {})))
