"""FF++ vs Celeb-DF: ``raydf compare`` on an MLflow store, and MLflow's compare-runs page in headless Chromium.

Generated videos are laid out as FaceForensics++ and as Celeb-DF v2, extracted by the real Ray
Data pipeline, trained into a real ``mlflow server`` (sqlite backend) and compared with
``raydf compare``, whose URL Chromium (Debian's package, driven by Playwright) then opens.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.infra_helpers import end_processes, free_ports
from tests.test_train import SMALL_MODEL

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = REPO / "test-artifacts" / "mlflow_compare_ffpp_celebdf.png"  # git-ignored
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Debian's Chromium in a closed network: no sandbox in the container, no background fetches.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]  # fmt: skip
PAIRS = {"train": (0, 1), "val": (2, 3), "test": (4, 5)}  # FF++ split files hold pairs of ids


def _generated_pairs(root: Path) -> dict[int, tuple[Path, Path]]:
    """source index -> (real video, its fake) of a ``raydf make-dataset`` folder."""
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines() if line.strip()]
    real = {r["source_id"]: root / r["file"] for r in rows if r["label"] == 0}
    fake = {r["source_id"]: root / r["file"] for r in rows if r["label"] == 1}
    return {int(s): (real[s], fake[s]) for s in sorted(real) if s in fake}


def layout_ffpp(src: Path, root: Path) -> Path:
    """FaceForensics++ as it unpacks: real ``i`` is ``original_sequences/youtube/c23/videos/00i.mp4``;
    its fake, made with pair partner ``j``, is ``manipulated_sequences/Deepfakes/c23/videos/00i_00j.mp4``;
    ``splits/{train,val,test}.json`` list the pairs."""
    orig, manip = root / "original_sequences/youtube/c23/videos", root / "manipulated_sequences/Deepfakes/c23/videos"
    orig.mkdir(parents=True)
    manip.mkdir(parents=True)
    for i, (real, fake) in _generated_pairs(src).items():
        j = i ^ 1  # 0<->1, 2<->3, 4<->5
        shutil.copy(real, orig / f"{i:03d}.mp4")
        shutil.copy(fake, manip / f"{i:03d}_{j:03d}.mp4")
    (root / "splits").mkdir()
    for split, (a, b) in PAIRS.items():
        (root / "splits" / f"{split}.json").write_text(json.dumps([[f"{a:03d}", f"{b:03d}"]]))
    return root


def layout_celebdf(src: Path, root: Path) -> Path:
    """Celeb-DF v2: ``Celeb-real/id{i}_0000.mp4``, ``Celeb-synthesis/id{i}_id{j}_0000.mp4`` and
    ``List_of_testing_videos.txt`` (``1`` real / ``0`` fake, then the relative path)."""
    (root / "Celeb-real").mkdir(parents=True)
    (root / "Celeb-synthesis").mkdir()
    test_lines = []
    for i, (real, fake) in _generated_pairs(src).items():
        j = i ^ 1
        shutil.copy(real, root / "Celeb-real" / f"id{i}_0000.mp4")
        shutil.copy(fake, root / "Celeb-synthesis" / f"id{i}_id{j}_0000.mp4")
        if i in PAIRS["test"]:
            test_lines += [f"1 Celeb-real/id{i}_0000.mp4", f"0 Celeb-synthesis/id{i}_id{j}_0000.mp4"]
    (root / "List_of_testing_videos.txt").write_text("\n".join(test_lines) + "\n")
    return root


# MLflow's compare page shows metrics in two virtualised grids (names | values, 45 px rows, 300 px
# tall) whose names side follows the values side one scroll event late. Scroll the values to the
# metric's row (twice, so the names catch up), then read the row: its cells, their screen y and
# whether they lie inside the grid's visible window.
SHOW_METRIC_ROW = """async (metric) => {
  const cells = () => [...document.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')];
  let cell = cells().find(c => c.innerText.trim() === metric);
  if (!cell) return null;
  const names = cell.closest('.ReactVirtualized__Grid');
  const grids = [...document.querySelectorAll('.ReactVirtualized__Grid')];
  const values = grids[grids.indexOf(names) + 1];
  const top = cell.style.top;
  const target = Math.max(0, parseFloat(top) - 2 * cell.offsetHeight);
  for (const t of [target, target + 1]) {
    values.scrollTop = t;
    await new Promise(r => setTimeout(r, 400));
  }
  cell = cells().find(c => c.innerText.trim() === metric);
  const box = values.getBoundingClientRect();
  const inView = (e) => { const r = e.getBoundingClientRect(); return r.top >= box.top - 1 && r.bottom <= box.bottom + 1; };
  const row = [...values.querySelectorAll('.ReactVirtualized__Grid__innerScrollContainer > div')]
    .filter(c => c.style.top === top).sort((a, b) => parseFloat(a.style.left) - parseFloat(b.style.left));
  return {label_y: cell.getBoundingClientRect().top, label_in_view: inView(cell),
          values: row.map(c => ({text: c.innerText.trim(), y: c.getBoundingClientRect().top, in_view: inView(c)}))};
}"""


def ui_metric(value: float) -> str:
    """A metric as MLflow's UI prints it (``Utils.formatMetric``: 3 decimals below 10, JS number text)."""
    if value == 0:
        return "0"
    rounded = math.floor(value * 1000 + 0.5) / 1000  # JS Math.round
    return str(int(rounded)) if rounded == int(rounded) else repr(rounded)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server at {url} not healthy after {timeout_s}s")


def _run(client, exp: str, name: str, tags: dict[str, str], metrics: dict[str, float], status: str = "FINISHED") -> str:  # noqa: ANN001
    run = client.create_run(exp, run_name=name, tags={"raydf.stage": "train", "split": "test", "style_config": "psp_tiny",
                                                      "weights": "random", **tags})
    for k, v in metrics.items():
        client.log_metric(run.info.run_id, k, v)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_compare_picks_the_best_finished_training_run_per_dataset(tmp_path, capsys):
    import mlflow

    from raydf.cli import main
    from raydf.compare import compare_url, run_compare

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    train, tune = client.create_experiment("raydf-train"), client.create_experiment("raydf-tune")
    test_m = lambda auc: {"test_accuracy": 0.75, "test_f1": 0.8, "test_roc_auc": auc, "test_eer": 0.25, "test_log_loss": 0.5, "test_n": 40}  # noqa: E731
    _run(client, train, "ff-a", {"dataset": "ffpp"}, test_m(0.71))
    ff_best = _run(client, tune, "ff-b", {"dataset": "ffpp"}, test_m(0.93))
    _run(client, train, "ff-running", {"dataset": "ffpp"}, test_m(0.99), status="RUNNING")  # unfinished: ignored
    _run(client, tune, "ff-val-only", {"dataset": "ffpp"}, {"val_auc": 1.0})  # test AUC outranks validation AUC
    parent = _run(client, tune, "sweep", {"dataset": "ffpp"}, test_m(0.999))
    client.set_tag(parent, "raydf.stage", "tune")  # a sweep's parent repeats its best child: not a training run
    cd_best = _run(client, train, "cd-a", {"dataset": "celebdf"}, {"val_auc": 0.625, "val_acc": 0.6})

    cmp = run_compare(uri)
    assert [(b.dataset, b.run_id, b.ranked_by) for b in cmp.best] == [("celebdf", cd_best, "val_auc"), ("ffpp", ff_best, "test_roc_auc")]
    lines = cmp.table.splitlines()
    assert [c.strip() for c in lines[0].strip("|").split("|")] == ["", "celebdf", "ffpp"]  # one column per dataset
    auc = next(line for line in lines if line.startswith("| ROC-AUC"))
    assert "0.6250 (val)" in auc and "0.9300" in auc
    assert next(line for line in lines if line.startswith("| n ")).rstrip(" |").endswith("40")
    assert cmp.url == compare_url(cmp.best, "http://127.0.0.1:5000") and cmp.hint and "mlflow ui" in cmp.hint
    assert cmp.url.startswith("http://127.0.0.1:5000/#/compare-runs?runs=%5B%22")
    assert main(["compare", "--tracking-uri", uri, "--dataset", "ffpp", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in out["runs"]] == [ff_best]
    assert main(["compare", "--tracking-uri", uri, "--dataset", "dfdc"]) == 1  # nothing to compare


@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.long  # short version: test_compare_picks_the_best_finished_training_run_per_dataset (runs, URL, CLI)
def test_compare_page_shows_the_ffpp_and_celebdf_runs_with_their_auc(ray_cluster, tmp_path, capsys):
    from playwright.sync_api import sync_playwright

    from raydf.cli import main
    from raydf.compare import run_compare
    from raydf.config import ExtractConfig, TrainConfig, load_config
    from raydf.extract import run_extraction
    from raydf.synth import make_dataset
    from raydf.train import run_training

    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: run `make browser-deps`"
    (port,) = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
         "--artifacts-destination", str(tmp_path / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=open(tmp_path / "mlflow-server.log", "wb"), stderr=subprocess.STDOUT,
        env={k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")},
    )  # fmt: skip
    try:
        # While the server starts: 6 generated pairs in both layouts, through the real extraction.
        make_dataset(tmp_path / "generated", videos=6, seed=7)
        cfg = load_config(ExtractConfig, {"style": {"config": "psp_tiny"}, "video": {"num_frames": 8}, "rows_per_file": 6})
        features = {}
        for name, layout in (("ffpp", layout_ffpp), ("celebdf", layout_celebdf)):
            root = layout(tmp_path / "generated", tmp_path / name)
            summary = run_extraction(str(root), str(tmp_path / f"features-{name}"), cfg, track=False)
            assert summary.ok == 12 and summary.error == 0, summary.lines()
            features[name] = str(tmp_path / f"features-{name}")
        _wait_healthy(url, server)

        train_cfg = load_config(TrainConfig, {"model": SMALL_MODEL, "max_epochs": 3, "batch_size": 4, "lr": 1e-3,
                                              "num_workers": 1, "cpus_per_worker": 0.5})  # fmt: skip
        trained = {}
        for name, uri in features.items():
            trained[name] = run_training(uri, train_cfg, storage_path=str(tmp_path / "ray_results"), name=f"{name}-small", tracking_uri=url)
            assert trained[name].splits["test"] == 4  # FF++: the test pair; Celeb-DF: the listed videos

        cmp = run_compare(url)
        assert [b.dataset for b in cmp.best] == ["celebdf", "ffpp"]
        assert {b.dataset: b.run_id for b in cmp.best} == {k: r.run_id for k, r in trained.items()}
        assert all(b.ranked_by == "test_roc_auc" for b in cmp.best)
        assert cmp.url.startswith(f"{url}/#/compare-runs?runs=") and "&experiments=" in cmp.url
        assert main(["compare", "--tracking-uri", url]) == 0
        printed = capsys.readouterr().out
        assert "| ROC-AUC" in printed and cmp.url in printed
        for b in cmp.best:
            assert f"{b.metrics['test_roc_auc']:.4f}" in printed

        SCREENSHOT.parent.mkdir(exist_ok=True)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 1700})
                page.goto(cmp.url, wait_until="domcontentloaded", timeout=60_000)
                for b in cmp.best:  # the run details: one column per run
                    page.get_by_text(b.run_name, exact=True).first.wait_for(timeout=90_000)
                    page.get_by_text(b.run_id, exact=True).first.wait_for(timeout=10_000)
                page.get_by_text("test_roc_auc", exact=True).first.wait_for(timeout=30_000)
                for label in ("collapse Visualizations", "collapse Parameters", "collapse Artifacts"):  # room for metrics and tags
                    page.get_by_label(label).click()
                if page.get_by_role("button", name="Close").count():  # the assistant side panel
                    page.get_by_role("button", name="Close").first.click()
                auc_row = page.evaluate(SHOW_METRIC_ROW, "test_roc_auc")
                page.screenshot(path=str(SCREENSHOT))
            finally:
                browser.close()
        assert auc_row is not None and auc_row["label_in_view"], auc_row
        values = auc_row["values"]
        assert len(values) == 2 and all(v["in_view"] and abs(v["y"] - auc_row["label_y"]) <= 3 for v in values), auc_row
        expected = [ui_metric(trained[b.dataset].test_metrics["test"]["roc_auc"]) for b in cmp.best]  # columns: runs in URL order
        assert [v["text"] for v in values] == expected, (auc_row, expected)
        assert SCREENSHOT.stat().st_size > 10_000
    finally:
        procs = {server.pid: psutil.Process(server.pid)}
        try:
            procs.update({c.pid: c for c in procs[server.pid].children(recursive=True)})
        except psutil.Error:
            pass
        end_processes(procs)
