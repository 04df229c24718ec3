// raydf detection page: upload a clip (progress, then the verdict, the clip with its per-frame
// evidence, face crops with heat maps when the answer explains itself), or score a local clip live
// over the WebSocket. Everything it loads comes from this service; the token, when the service
// asks for one, stays in sessionStorage.
"use strict";

const TOKEN_KEY = "raydf.token";
const MAX_CROPS = 16; // sampled frames shown as crops
const $ = (id) => document.getElementById(id);

const state = {
  authRequired: false,
  model: null, // GET /v1/model
  file: null, // the clip last scored
  result: null, // its DetectResult JSON
  objectUrl: null,
};

// ---- small helpers -------------------------------------------------------------------------------
function setState(name) {
  document.body.dataset.state = name;
}

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function authHeaders() {
  const t = token();
  return t ? { Authorization: "Bearer " + t } : {};
}

function show(el, on) {
  el.hidden = !on;
}

function showError(el, message) {
  el.textContent = message;
  show(el, Boolean(message));
}

function fmt(x, digits = 4) {
  return Number(x).toFixed(digits);
}

function errorMessage(body, status) {
  if (body && body.error && body.error.message) return `${body.error.status}: ${body.error.message}`;
  return `HTTP ${status}`;
}

// ---- token ---------------------------------------------------------------------------------------
function askToken() {
  return new Promise((resolve) => {
    const dialog = $("token-dialog");
    const input = $("token-input");
    input.value = "";
    dialog.addEventListener(
      "close",
      () => {
        const t = input.value.trim();
        if (t) sessionStorage.setItem(TOKEN_KEY, t);
        show($("token-button"), true);
        resolve(t);
      },
      { once: true },
    );
    dialog.showModal();
    input.focus();
  });
}

async function ensureToken() {
  if (state.authRequired && !token()) await askToken();
}

// ---- model ---------------------------------------------------------------------------------------
async function loadModel() {
  let health = null;
  try {
    health = await (await fetch("/healthz")).json();
  } catch (e) {
    $("model-line").textContent = "the service does not answer";
    return;
  }
  state.authRequired = Boolean(health.auth_required);
  show($("token-button"), state.authRequired);
  await ensureToken();
  const resp = await fetch("/v1/model", { headers: authHeaders() });
  const body = await resp.json().catch(() => null);
  if (resp.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    $("model-line").textContent = "the token was refused";
    await askToken();
    return loadModel();
  }
  if (!resp.ok) {
    $("model-line").textContent = `no model: ${errorMessage(body, resp.status)}`;
    return;
  }
  state.model = body;
  const m = body.model;
  $("model-line").textContent =
    `model ${m.source} · T=${body.num_frames} · threshold ${body.threshold} · ${body.device} ${body.feature_precision}`;
  $("live-window").textContent = body.num_frames;
  $("live-every").value = body.stream.every;
  showError($("model-warning"), m.warning ? `Model warning: ${m.warning}` : "");
}

// ---- upload --------------------------------------------------------------------------------------
function upload(file) {
  return new Promise((resolve) => {
    const form = new FormData();
    form.append("video", file, file.name);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", $("explain").checked ? "/v1/detect?explain=true" : "/v1/detect");
    for (const [k, v] of Object.entries(authHeaders())) xhr.setRequestHeader(k, v);
    xhr.responseType = "json";
    const bar = $("progress");
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) {
        bar.value = (100 * ev.loaded) / ev.total;
        $("status").textContent = `uploading ${Math.round(bar.value)}%`;
      }
    };
    xhr.upload.onload = () => {
      bar.removeAttribute("value"); // indeterminate: the service is working
      $("status").textContent = "processing: decoding, finding faces, computing features…";
      setState("processing");
    };
    xhr.onload = () => resolve({ status: xhr.status, body: xhr.response });
    xhr.onerror = () => resolve({ status: 0, body: null });
    setState("uploading");
    bar.value = 0;
    $("status").textContent = "uploading 0%";
    xhr.send(form);
  });
}

async function scoreFile(file) {
  if (!file) return;
  await ensureToken();
  showError($("error"), "");
  show($("progress-box"), true);
  const t0 = performance.now();
  let { status, body } = await upload(file);
  if (status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    await askToken();
    ({ status, body } = await upload(file));
  }
  show($("progress-box"), false);
  if (status !== 200 || !body || body.error) {
    setState("error");
    showError($("error"), status === 0 ? "the service could not be reached" : errorMessage(body, status));
    return;
  }
  state.file = file;
  state.result = body;
  await render(body, file, (performance.now() - t0) / 1000);
  setState("done");
}

// ---- the answer ----------------------------------------------------------------------------------
function decidingTrack(result) {
  let best = null;
  for (const f of result.faces) if (best === null || f.fake_probability > best.fake_probability) best = f;
  return best;
}

async function render(result, file, seconds) {
  show($("result"), true);
  const verdict = $("verdict");
  verdict.className = "verdict " + result.label;
  $("label").textContent = result.label.toUpperCase();
  const prob = $("probability");
  prob.textContent = fmt(result.fake_probability);
  prob.dataset.value = String(result.fake_probability);
  $("threshold").textContent = result.threshold;
  $("video-name").textContent = `${result.video} · ${fmt(seconds, 1)} s`;
  if (result.model.warning) showError($("model-warning"), `Model warning: ${result.model.warning}`);

  const tracks = $("tracks");
  tracks.replaceChildren();
  for (const f of result.faces) {
    const li = document.createElement("li");
    li.dataset.trackId = f.track_id;
    li.dataset.value = String(f.fake_probability);
    const found = f.valid.filter(Boolean).length;
    li.textContent = `face track ${f.track_id}: P(fake) = ${fmt(f.fake_probability)} (face in ${found}/${f.valid.length} frames)`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(60 * f.fake_probability)}px`;
    li.appendChild(bar);
    tracks.appendChild(li);
  }
  if (!result.faces.length) tracks.innerHTML = "<li>no face track</li>";

  const notes = $("notes");
  notes.replaceChildren();
  for (const n of result.notes || []) {
    if (n === result.model.warning) continue;
    const li = document.createElement("li");
    li.textContent = n;
    notes.appendChild(li);
  }
  $("raw-json").textContent = JSON.stringify(result, null, 2);

  if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
  state.objectUrl = URL.createObjectURL(file);
  const player = $("player");
  player.src = state.objectUrl;
  await new Promise((resolve) => {
    if (player.readyState >= 1) return resolve();
    player.addEventListener("loadedmetadata", resolve, { once: true });
    player.addEventListener("error", resolve, { once: true });
    setTimeout(resolve, 5000);
  });
  drawTimeline(result, player);
  await drawCrops(result);
}

function evidenceOf(result, i) {
  const ex = result.explanation;
  if (ex && Array.isArray(ex.frame_importance) && ex.frame_importance[i] != null) return ex.frame_importance[i];
  return result.frames[i].evidence;
}

function duration(result, player) {
  const last = result.frames.length ? result.frames[result.frames.length - 1].time_s : 0;
  return Number.isFinite(player.duration) && player.duration > 0 ? Math.max(player.duration, last) : Math.max(last * 1.05, 1e-3);
}

function seekTo(time, index) {
  const player = $("player");
  player.pause();
  player.currentTime = time + 1e-3; // just inside the frame whose pts is `time`
  for (const el of document.querySelectorAll(".frame-mark.selected, .crop.selected")) el.classList.remove("selected");
  for (const el of document.querySelectorAll(`[data-frame="${index}"]`)) el.classList.add("selected");
}

function drawTimeline(result, player) {
  const box = $("timeline");
  for (const el of box.querySelectorAll(".frame-mark")) el.remove();
  const dur = duration(result, player);
  const values = result.frames.map((_, i) => evidenceOf(result, i));
  const scale = Math.max(1e-12, ...values.filter((v) => v != null).map(Math.abs));
  result.frames.forEach((f, i) => {
    const v = values[i];
    const b = document.createElement("button");
    b.type = "button";
    b.className = "frame-mark " + (v == null || !f.face_valid ? "noface" : v >= 0 ? "pos" : "neg");
    b.style.left = `${(100 * f.time_s) / dur}%`;
    if (v != null && f.face_valid) {
      const h = Math.max(3, Math.round((28 * Math.abs(v)) / scale));
      b.style.height = `${h}px`;
      b.style.top = v >= 0 ? `${32 - h}px` : "32px";
    }
    b.dataset.frame = i;
    b.dataset.time = f.time_s;
    const ev = v == null ? "no face" : `evidence ${v >= 0 ? "+" : ""}${v.toPrecision(3)}`;
    b.title = `frame ${f.index} · ${fmt(f.time_s, 2)} s · ${ev}`;
    b.setAttribute("aria-label", b.title);
    b.addEventListener("click", () => seekTo(f.time_s, i));
    box.appendChild(b);
  });
  const head = $("playhead");
  const move = () => (head.style.left = `${(100 * player.currentTime) / dur}%`);
  player.ontimeupdate = move;
  player.onseeked = move;
  move();
}

// ---- face crops and heat maps --------------------------------------------------------------------
function heatmapsByFrame(result) {
  const out = new Map();
  const ex = result.explanation;
  if (!ex || !Array.isArray(ex.heatmaps)) return out;
  for (const h of ex.heatmaps) if (h && Number.isInteger(h.frame)) out.set(h.frame, h);
  return out;
}

function loadImage(src) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => resolve(null);
    img.src = src;
  });
}

// A frame of the clip at `time` (a second <video>, so the player is left alone).
function frameGrabber(url) {
  const v = document.createElement("video");
  v.muted = true;
  v.preload = "auto";
  v.src = url;
  const ready = new Promise((resolve) => {
    v.addEventListener("loadeddata", () => resolve(true), { once: true });
    v.addEventListener("error", () => resolve(false), { once: true });
    setTimeout(() => resolve(v.readyState >= 2), 8000);
  });
  return async (time) => {
    if (!(await ready)) return null;
    await new Promise((resolve) => {
      const done = () => resolve();
      v.addEventListener("seeked", done, { once: true });
      setTimeout(done, 3000);
      v.currentTime = time + 1e-3;
    });
    return v;
  };
}

function drawHeat(ctx, heat, size) {
  // heat: rows of floats in [0, 1] (h x w); drawn as a translucent red-yellow map over the crop.
  const h = heat.length;
  const w = h ? heat[0].length : 0;
  if (!h || !w) return;
  const img = new ImageData(w, h);
  for (let y = 0; y < h; y++)
    for (let x = 0; x < w; x++) {
      const v = Math.min(1, Math.max(0, Number(heat[y][x]) || 0));
      const k = 4 * (y * w + x);
      img.data[k] = 255;
      img.data[k + 1] = Math.round(255 * Math.max(0, v - 0.5) * 2);
      img.data[k + 2] = 0;
      img.data[k + 3] = Math.round(170 * v);
    }
  const tmp = document.createElement("canvas");
  tmp.width = w;
  tmp.height = h;
  tmp.getContext("2d").putImageData(img, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(tmp, 0, 0, size, size);
}

async function drawCrops(result) {
  const box = $("crops");
  box.replaceChildren();
  const track = decidingTrack(result);
  const heat = heatmapsByFrame(result);
  const n = result.frames.length;
  const picks = [];
  if (heat.size) for (const i of [...heat.keys()].sort((a, b) => a - b)) picks.push(i);
  else for (let j = 0; j < Math.min(n, MAX_CROPS); j++) picks.push(Math.round((j * (n - 1)) / Math.max(1, Math.min(n, MAX_CROPS) - 1)));
  $("crops-title").textContent = heat.size ? "Face crops and heat maps" : "Face crops";
  $("crops-note").textContent = heat.size
    ? `${result.explanation.method || "explanation"}: where in the face the model looked, on the ${heat.size} most important frames`
    : `The crop box of the face on each sampled frame (${$("explain").checked ? "the service sent no explanation" : "tick explain for heat maps"}).`;
  const grab = frameGrabber(state.objectUrl);
  const size = 128;
  for (const i of [...new Set(picks)]) {
    const f = result.frames[i];
    const h = heat.get(i);
    const boxPx = (h && h.box) || (track && track.boxes[i]);
    const cell = document.createElement("div");
    cell.className = "crop" + (h ? " has-heatmap" : "");
    cell.dataset.frame = i;
    const canvas = document.createElement("canvas");
    canvas.width = size;
    canvas.height = size;
    const ctx = canvas.getContext("2d");
    const caption = document.createElement("div");
    const ev = evidenceOf(result, i);
    caption.textContent = `${fmt(f.time_s, 2)} s` + (ev == null ? " · no face" : ` · ${ev >= 0 ? "+" : ""}${ev.toPrecision(2)}`);
    cell.append(canvas, caption);
    cell.addEventListener("click", () => seekTo(f.time_s, i));
    box.appendChild(cell);

    let drewCrop = false;
    if (h && h.crop) {
      const img = await loadImage(h.crop);
      if (img) {
        ctx.drawImage(img, 0, 0, size, size);
        drewCrop = true;
      }
    }
    if (!drewCrop) {
      const v = await grab(f.time_s);
      if (v && v.videoWidth) {
        if (boxPx) {
          // the box with a margin, so the crop box itself shows
          const [x1, y1, x2, y2] = boxPx;
          const side = 1.4 * Math.max(x2 - x1, y2 - y1);
          const cx = (x1 + x2) / 2;
          const cy = (y1 + y2) / 2;
          const sx = cx - side / 2;
          const sy = cy - side / 2;
          ctx.drawImage(v, sx, sy, side, side, 0, 0, size, size);
          if (!h) {
            ctx.strokeStyle = "#ffd54f";
            ctx.lineWidth = 2;
            const k = size / side;
            ctx.strokeRect((x1 - sx) * k, (y1 - sy) * k, (x2 - x1) * k, (y2 - y1) * k);
          }
        } else {
          ctx.drawImage(v, 0, 0, size, size); // no face on this frame: the whole frame
        }
      }
    }
    if (h) {
      if (typeof h.heatmap === "string") {
        const img = await loadImage(h.heatmap);
        if (img) {
          ctx.globalAlpha = 0.6;
          ctx.drawImage(img, 0, 0, size, size);
          ctx.globalAlpha = 1;
        }
      } else if (Array.isArray(h.heatmap || h.array)) {
        drawHeat(ctx, h.heatmap || h.array, size);
      }
    }
  }
}

// ---- live scoring --------------------------------------------------------------------------------
const live = { ws: null, points: [], sent: 0, updates: 0, lastSent: -1e9, running: false, url: null };

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/stream`;
}

function drawChart() {
  const c = $("live-chart");
  const ctx = c.getContext("2d");
  const w = c.width;
  const h = c.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#d9dee5";
  ctx.strokeRect(0.5, 0.5, w - 1, h - 1);
  const dur = Math.max(1e-3, $("live-video").duration || 0, ...live.points.map((p) => p.t));
  const thr = state.model ? state.model.threshold : 0.5;
  ctx.setLineDash([4, 4]);
  ctx.strokeStyle = "#5d6773";
  ctx.beginPath();
  ctx.moveTo(0, h - thr * h);
  ctx.lineTo(w, h - thr * h);
  ctx.stroke();
  ctx.setLineDash([]);
  if (!live.points.length) return;
  ctx.strokeStyle = "#c62828";
  ctx.lineWidth = 2;
  ctx.beginPath();
  live.points.forEach((p, i) => {
    const x = (w * p.t) / dur;
    const y = h - p.p * h;
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function liveMessage(ev) {
  if (typeof ev.data !== "string") return;
  const msg = JSON.parse(ev.data);
  if (msg.type === "ready") {
    $("live-status").textContent = `streaming: window ${msg.window} frames, an update every ${msg.every} frames`;
  } else if (msg.type === "score") {
    live.updates += 1;
    const p = $("live-probability");
    p.textContent = fmt(msg.fake_probability);
    p.dataset.value = String(msg.fake_probability);
    const label = $("live-label");
    label.textContent = msg.label.toUpperCase();
    label.className = "label small " + msg.label;
    $("live-latency").textContent = `${fmt(msg.latency_s, 2)} s`;
    $("live-updates").textContent = live.updates;
    live.points.push({ t: msg.window.end_s, p: msg.fake_probability });
    drawChart();
  } else if (msg.type === "done") {
    $("live-status").textContent = `finished: ${msg.updates} updates over ${msg.frames_received} frames (${msg.skipped} collapsed while busy)`;
    document.body.dataset.live = "done";
  } else if (msg.type === "error") {
    showError($("live-error"), `${msg.status}: ${msg.message}`);
  }
}

function tokenProtocols() {
  const t = token();
  // a subprotocol must be an HTTP token; anything else goes in the first message instead
  return t && /^[A-Za-z0-9!#$%&'*+.^_`|~-]+$/.test(t) ? ["raydf.token." + t] : [];
}

async function liveStart() {
  const file = $("live-file").files[0];
  if (!file) return;
  await ensureToken();
  showError($("live-error"), "");
  live.points = [];
  live.sent = 0;
  live.updates = 0;
  live.lastSent = -1e9;
  $("live-updates").textContent = "0";
  $("live-sent").textContent = "0";
  drawChart();
  const video = $("live-video");
  if (live.url) URL.revokeObjectURL(live.url);
  live.url = URL.createObjectURL(file);
  video.src = live.url;
  video.currentTime = 0;
  const protocols = ["raydf.stream.v1", ...tokenProtocols()];
  const ws = new WebSocket(wsUrl(), protocols);
  live.ws = ws;
  ws.binaryType = "arraybuffer";
  ws.onmessage = liveMessage;
  ws.onclose = (ev) => {
    live.running = false;
    $("live-start").disabled = false;
    $("live-stop").disabled = true;
    if (ev.code === 4401) {
      sessionStorage.removeItem(TOKEN_KEY);
      showError($("live-error"), "the token was refused");
    }
  };
  ws.onerror = () => showError($("live-error"), "the stream could not be opened");
  await new Promise((resolve) => ws.addEventListener("open", resolve, { once: true }));
  if (state.authRequired && !tokenProtocols().length) ws.send(JSON.stringify({ type: "auth", token: token() }));
  const every = Math.max(1, parseInt($("live-every").value, 10) || 8);
  ws.send(JSON.stringify({ type: "start", every, name: file.name }));
  document.body.dataset.live = "running";
  live.running = true;
  $("live-start").disabled = true;
  $("live-stop").disabled = false;
  const canvas = document.createElement("canvas");
  const ctx = canvas.getContext("2d");
  const fps = Math.max(1, parseFloat($("live-fps").value) || 12);
  const send = (mediaTime) => {
    if (!live.running || ws.readyState !== WebSocket.OPEN) return;
    if (mediaTime - live.lastSent < 1 / fps - 1e-6) return;
    live.lastSent = mediaTime;
    const scale = Math.min(1, 640 / Math.max(1, video.videoWidth));
    canvas.width = Math.round(video.videoWidth * scale);
    canvas.height = Math.round(video.videoHeight * scale);
    ctx.drawImage(video, 0, 0, canvas.width, canvas.height);
    canvas.toBlob(
      (blob) => {
        if (!blob || ws.readyState !== WebSocket.OPEN) return;
        // header and frame in one callback: the pairs never interleave
        ws.send(JSON.stringify({ type: "frame", time_s: mediaTime }));
        ws.send(blob);
        live.sent += 1;
        $("live-sent").textContent = live.sent;
      },
      "image/jpeg",
      0.85,
    );
  };
  if ("requestVideoFrameCallback" in HTMLVideoElement.prototype) {
    const loop = (now, meta) => {
      send(meta.mediaTime);
      if (live.running && !video.ended) video.requestVideoFrameCallback(loop);
    };
    video.requestVideoFrameCallback(loop);
  } else {
    const timer = setInterval(() => (live.running && !video.ended ? send(video.currentTime) : clearInterval(timer)), 1000 / fps);
  }
  video.onended = () => liveEnd();
  await video.play();
}

function liveEnd() {
  if (!live.ws || live.ws.readyState !== WebSocket.OPEN) return;
  live.running = false;
  // give the last toBlob callbacks a moment, then ask for the final window
  setTimeout(() => live.ws.readyState === WebSocket.OPEN && live.ws.send(JSON.stringify({ type: "end" })), 300);
}

function liveStop() {
  $("live-video").pause();
  liveEnd();
}

// ---- wiring ----------------------------------------------------------------------------------------
function selectTab(which) {
  const upload = which === "upload";
  $("tab-upload").setAttribute("aria-selected", String(upload));
  $("tab-live").setAttribute("aria-selected", String(!upload));
  show($("upload-view"), upload);
  show($("live-view"), !upload);
}

function wire() {
  const drop = $("drop");
  $("file").addEventListener("change", (ev) => scoreFile(ev.target.files[0]));
  for (const name of ["dragenter", "dragover"])
    drop.addEventListener(name, (ev) => {
      ev.preventDefault();
      drop.classList.add("over");
    });
  for (const name of ["dragleave", "drop"]) drop.addEventListener(name, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    if (file) scoreFile(file);
  });
  $("tab-upload").addEventListener("click", () => selectTab("upload"));
  $("tab-live").addEventListener("click", () => selectTab("live"));
  $("token-button").addEventListener("click", async () => {
    await askToken();
    loadModel();
  });
  $("live-file").addEventListener("change", () => ($("live-start").disabled = !$("live-file").files.length));
  $("live-start").addEventListener("click", liveStart);
  $("live-stop").addEventListener("click", liveStop);
  drawChart();
  loadModel();
}

document.addEventListener("DOMContentLoaded", wire);
