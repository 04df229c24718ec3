"""The service's page in headless Chromium (Debian's, driven by Playwright): upload, verdict, evidence, live mode.

A real ``raydf serve`` (token on, a real model bundle) and generated clips. The page loads
without the token, asks for it once, then scores a generated fake (file chooser) and a generated
real clip (dropped on the page); the probability it shows must be the API's for the same file.
Screenshots go to test-artifacts/ (git-ignored).
"""

from __future__ import annotations

import base64
import shutil
import tempfile
from pathlib import Path

import pytest
import requests

from tests.serve_helpers import ARTIFACTS, NUM_FRAMES, generated_clips, make_bundle, sigterm_as_interrupt, start_service

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.integration]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian's Chromium in a closed network: no sandbox in the container, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--autoplay-policy=no-user-gesture-required"]  # fmt: skip
# Every change of <body data-state>, in order (the page's upload -> processing -> done states).
RECORD_STATES = """
window.__states = [];
new MutationObserver(() => window.__states.push(document.body.dataset.state))
  .observe(document, {attributes: true, subtree: true, attributeFilter: ["data-state"]});
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    work = tmp_path_factory.mktemp("serve-browser")
    model = make_bundle(work / "model" / "raydf_model.pt")
    with sigterm_as_interrupt():
        svc = start_service(work / "svc", model=model, wait_s=0)
        try:
            clips = generated_clips(work / "clips", videos=2, seed=5)
            svc.ready(420)
            svc.wait_model(120)
            yield svc, clips
        finally:
            svc.stop()


@pytest.fixture(scope="module")
def browser_page(served):
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium not found at {CHROMIUM} (make browser-deps installs Debian's)")
    svc, _ = served
    with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS,
                                                   viewport={"width": 1200, "height": 1000})  # fmt: skip
        page = ctx.new_page()
        page.add_init_script(RECORD_STATES)
        seen: list[tuple[str, int, bool]] = []  # (url, status, sent a token)
        errors: list[str] = []
        page.on("response", lambda r: seen.append((r.url, r.status, "authorization" in r.request.headers)))
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"{svc.url}/")
        page.wait_for_selector("#token-dialog[open]")  # asks for the token once
        page.fill("#token-input", svc.token)
        page.click("#token-save")
        page.wait_for_function("() => document.getElementById('model-line').textContent.startsWith('model ')")
        yield page, seen, errors
        ctx.close()


def _api(svc, path: Path) -> dict:
    r = svc.detect(path, params={"explain": "true"})
    assert r.status_code == 200, r.text
    return r.json()


def _check_verdict(page, api: dict) -> None:
    shown = page.text_content("#probability")
    assert shown == f"{api['fake_probability']:.4f}"
    assert abs(float(page.get_attribute("#probability", "data-value")) - api["fake_probability"]) <= 1e-5
    assert page.text_content("#label") == api["label"].upper()
    tracks = page.query_selector_all("#tracks li")
    assert len(tracks) == len(api["faces"])
    for li, face in zip(tracks, api["faces"]):
        assert abs(float(li.get_attribute("data-value")) - face["fake_probability"]) <= 1e-5
        assert f"{face['fake_probability']:.4f}" in li.text_content()
    warning = page.query_selector("#model-warning")
    assert warning.is_visible() and api["model"]["warning"] in warning.text_content()
    # the timeline: one point per sampled frame; a click seeks the player to that frame's time
    marks = page.query_selector_all("#timeline .frame-mark")
    assert len(marks) == len(api["frames"]) == NUM_FRAMES
    i = len(marks) // 2
    page.click(f".frame-mark[data-frame='{i}']")
    page.wait_for_function(f"() => Math.abs(document.getElementById('player').currentTime - {api['frames'][i]['time_s']}) < 0.05")
    # face crops: heat maps when the answer has them, the crop boxes otherwise
    ex = api.get("explanation") or {}
    crops = page.query_selector_all("#crops .crop")
    if ex.get("heatmaps"):
        assert len(page.query_selector_all("#crops .crop.has-heatmap")) == len(ex["heatmaps"])
    else:
        assert len(crops) == min(NUM_FRAMES, 16)
    painted = page.evaluate("""() => [...document.querySelectorAll('#crops canvas')].map(c => {
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let s = 0; for (let k = 0; k < d.length; k += 4) s += d[k] + d[k + 1] + d[k + 2];
        return s / (d.length / 4); })""")
    assert painted and all(v > 10 for v in painted)  # each crop shows the clip, not an empty canvas


def test_the_page_scores_a_fake_and_a_real_clip_as_the_api_does(served, browser_page):
    svc, clips = served
    page, seen, errors = browser_page
    ARTIFACTS.mkdir(exist_ok=True)

    fake = clips["fake/0000_blend.mp4"]
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=300_000)
    assert page.get_attribute("body", "data-state") == "done", page.text_content("#error")
    states = page.evaluate("window.__states")
    assert [s for s in states if s in ("uploading", "processing", "done")][-3:] == ["uploading", "processing", "done"]
    api_fake = _api(svc, fake)
    _check_verdict(page, api_fake)
    page.screenshot(path=str(ARTIFACTS / "serve_page_fake.png"), full_page=True)

    # the real clip, dropped on the drop zone
    real = clips["real/0000.mp4"]
    page.evaluate(
        """([name, b64]) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, {type: 'video/mp4'}));
            const drop = document.getElementById('drop');
            for (const type of ['dragenter', 'dragover', 'drop'])
                drop.dispatchEvent(new DragEvent(type, {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        [real.name, base64.b64encode(real.read_bytes()).decode()],
    )
    page.wait_for_function("() => document.getElementById('video-name').textContent.startsWith('0000.mp4')", timeout=300_000)
    page.wait_for_selector("body[data-state=done]", timeout=300_000)
    api_real = _api(svc, real)
    _check_verdict(page, api_real)
    page.screenshot(path=str(ARTIFACTS / "serve_page_real.png"), full_page=True)

    # everything came from the service; the page and its assets needed no token
    origin = svc.url
    assert all(url.startswith((origin, "blob:", "data:")) for url, _, _ in seen), seen
    assets = {url[len(origin):]: (status, token) for url, status, token in seen}
    for path in ("/", "/static/app.js", "/static/style.css"):
        assert assets[path] == (200, False), (path, assets.get(path))
    assert not errors, errors


def test_live_mode_streams_a_local_clip_and_shows_the_rolling_score(served, browser_page):
    svc, clips = served
    page, _, errors = browser_page
    page.click("#tab-live")
    page.set_input_files("#live-file", str(clips["fake/0001_flicker.mp4"]))
    page.fill("#live-every", "4")
    page.click("#live-start")
    page.wait_for_selector("body[data-live=done]", timeout=300_000)
    updates = int(page.text_content("#live-updates"))
    sent = int(page.text_content("#live-sent"))
    assert updates >= 1 and sent >= 4
    prob = page.text_content("#live-probability")
    assert 0.0 <= float(prob) <= 1.0 and len(prob.split(".")[1]) == 4
    assert page.text_content("#live-latency").endswith(" s")
    assert page.text_content("#live-label") in ("FAKE", "REAL")
    assert page.query_selector("#live-error").is_hidden()
    page.screenshot(path=str(ARTIFACTS / "serve_page_live.png"), full_page=True)
    assert not errors, errors
    assert requests.get(f"{svc.url}/healthz", timeout=30).json()["status"] == "ok"
