"""Generalisation: self-blended pseudo-fakes through the pipeline, their splits, the evaluation protocols, the CLI flags.

One extraction of the session's generated set with pseudo-fakes (T=16, psp_tiny) and one small
training on it are shared by the module; the slow tests train the cross-family models.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raydf import schema as S
from raydf.config import ExtractConfig, TrainConfig, load_config, to_dict
from raydf.evaluate import best_accuracy_threshold
from raydf.splits import load_index, plan_splits

SMALL_MODEL = {"gru_hidden": 64, "d_model": 64, "transformer_heads": 4, "ff_dim": 128, "fc_hidden": 32, "transformer_layers": 1}
FRAMES = 16


def small_train_cfg(**overrides) -> TrainConfig:
    base = {"model": SMALL_MODEL, "max_epochs": 3, "batch_size": 4, "lr": 1e-3, "num_workers": 2, "cpus_per_worker": 0.5,
            "val_fraction": 0.25, "test_fraction": 0.25}  # fmt: skip
    base.update(overrides)
    return load_config(TrainConfig, base)


def sbi_cfg(**overrides) -> ExtractConfig:
    base = {"style": {"config": "psp_tiny"}, "video": {"num_frames": FRAMES}, "rows_per_file": 8, "feature_batch_size": 2,
            "pseudo_fakes": "self-blend", "pseudo_seed": 3}  # fmt: skip
    base.update(overrides)
    return load_config(ExtractConfig, base)


# ---- no Ray -----------------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 20)), min_size=1, max_size=30))
def test_validation_threshold_maximises_accuracy(pairs):
    y = np.asarray([a for a, _ in pairs])
    p = np.asarray([b / 20 for _, b in pairs])
    t, acc = best_accuracy_threshold(y, p)
    assert 0.0 <= t <= np.nextafter(1.0, 2.0)
    assert acc == pytest.approx(np.mean((p >= t) == (y == 1)))
    brute = max(np.mean((p >= c) == (y == 1)) for c in np.linspace(0, 1.0001, 2002))  # every threshold on a fine grid
    assert acc == pytest.approx(brute)


def test_validation_threshold_moves_to_where_the_classes_split():
    t, acc = best_accuracy_threshold([0, 0, 0, 1, 1], [0.01, 0.02, 0.03, 0.07, 0.09])  # a calibrated-low model
    assert acc == 1.0 and 0.03 < t < 0.07
    t, acc = best_accuracy_threshold([0, 1, 0, 1], [0.2, 0.8, 0.3, 0.9])
    assert t == 0.55 and acc == 1.0  # nearest to 0.5 of the perfect thresholds (0.3, 0.8)


def _index(rows):
    return pa.Table.from_pylist(
        [{S.VIDEO_ID: v, S.TRACK_ID: 0, S.LABEL: lab, S.SPLIT: "", S.SOURCE_ID: src, S.DATASET: "d", S.METHOD: m, S.META: "{}",
          S.STATUS: "ok", S.FACE_VALID: [True] * 8} for v, lab, src, m in rows]  # fmt: skip
    )


def test_self_blend_only_training_keeps_every_dataset_fake_out_of_training_and_validation():
    rows = []
    for s in range(16):
        rows += [(f"r{s}", 0, f"r{s}", ""), (f"r{s}/self_blend", 1, f"r{s}", "self_blend"), (f"r{s}_x", 1, f"r{s}", "blend" if s % 2 else "flicker")]
    plan = plan_splits(_index(rows), small_train_cfg(fakes="pseudo", methods=["self_blend"]))
    used = {v for keys in plan.keys.values() for v, _ in keys}
    assert not any(v.endswith("_x") for v in used)  # no dataset fake anywhere, validation included
    assert plan.pseudo_val and plan.excluded["other_method"] == 16
    split_of = {v: s for s, keys in plan.keys.items() for v, _ in keys}
    assert all(split_of[f"r{s}/self_blend"] == split_of[f"r{s}"] for s in range(16))
    assert {plan.labels[k] for k in plan.keys["val"]} == {0, 1}


def test_cli_flags_reach_the_configs(tmp_path):
    from raydf import cli

    parser = cli.build_parser()
    args = parser.parse_args(["extract", "--input", "in", "--output", "out", "--pseudo-fakes", "self-blend", "--pseudo-seed", "5"])
    cfg = cli.extract_config_from_args(args)
    assert cfg.pseudo_fakes == "self-blend" and cfg.pseudo_seed == 5
    assert cli.extract_config_from_args(parser.parse_args(["extract", "--input", "i", "--output", "o"])).pseudo_fakes == ""
    args = parser.parse_args(["train", "--features", "f", "--fakes", "pseudo", "--methods", "self_blend", "--aggregation", "mean"])
    tcfg = cli._train_config(args)
    assert (tcfg.fakes, tcfg.methods, tcfg.aggregation) == ("pseudo", ("self_blend",), "mean")
    assert cli._train_config(parser.parse_args(["train", "--features", "f"])).fakes == "dataset"
    args = parser.parse_args(["evaluate", "--features", "a=x", "--aggregation", "mean", "--no-track"])
    assert args.aggregation == "mean" and args.no_track
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--features", "f", "--fakes", "synthetic"])


def test_reproduce_plans_each_training_set_both_ways():
    from raydf.reproduce import REPORT, SELF_BLEND, plan_experiment

    stores, models = plan_experiment({"ffpp": "/d/ff", "celebdf": "/d/cd", "dfdc": "/d/dfdc"}, "/out", pseudo_fakes=True,
                                     cross_manipulation=True, ffpp_compressions=("c23", "c40"), ffpp_methods=("Deepfakes", "FaceSwap"))  # fmt: skip
    by = {s.name: s for s in stores}
    assert by["ffpp"].pseudo_fakes and by["ffpp"].uri == "/out/features/ffpp-self-blend" and by["ffpp"].compression == "c23"
    assert not by["ffpp-c40"].pseudo_fakes and by["ffpp-c40"].compression == "c40"
    assert by["celebdf"].pseudo_fakes and not by["dfdc"].pseudo_fakes  # DFDC is a test set: no pseudo-fakes made
    keys = {m.key: m for m in models}
    assert keys["ffpp"].fakes == "dataset" and keys["ffpp"].way == REPORT
    assert keys["ffpp+self-blend"].fakes == "pseudo" and keys["ffpp+self-blend"].methods == ("self_blend",)
    assert keys["celebdf+self-blend"].way == SELF_BLEND
    assert keys["ffpp[FaceSwap]"].methods == ("FaceSwap",) and "celebdf[FaceSwap]" not in keys
    plain, _ = plan_experiment({"ffpp": "/d/ff"}, "/out")
    assert [s.uri for s in plain] == ["/out/features/ffpp"]  # the report's path, as before
    with pytest.raises(ValueError, match="unknown datasets"):
        plan_experiment({"ucf": "/d"}, "/out")


def _evaluation(protocol, dataset, methods, probs, labels, fakes="all"):
    from raydf.protocol import Evaluation, _metrics, ValThreshold
    from raydf.scoring import Predictions

    n = len(labels)
    pred = Predictions(ids=[f"v{i}" for i in range(n)], labels=np.asarray(labels), probs=np.asarray(probs), embeddings=np.zeros((n, 2)),
                       methods=[methods[i % len(methods)] if y else "" for i, y in enumerate(labels)], tracks=[1] * n, aggregation="max",
                       style_sample=np.zeros((0, 4, 512)), valid_sample=np.zeros((0, 4), bool), label_sample=np.zeros(0, int))  # fmt: skip
    m = _metrics(pred, ValThreshold(0.5, 1.0, 4, "max"))
    return Evaluation(f"{protocol}/{dataset}", protocol, m, pred, dataset=dataset, fakes=fakes, fake_methods=tuple(sorted(set(methods))))


def test_side_by_side_pairs_the_report_model_with_the_self_blend_model_on_the_same_test_sets():
    from raydf.reproduce import plan_experiment, side_by_side

    _, models = plan_experiment({"ffpp": "/d/ff", "dfdc": "/d/dfdc"}, "/out", pseudo_fakes=True)
    y = [0, 0, 1, 1]
    evaluations = {
        "ffpp": {"a": _evaluation("within-set", "ffpp", ["Deepfakes"], [0.1, 0.2, 0.8, 0.9], y),
                 "b": _evaluation("cross-dataset", "dfdc", ["dfdc"], [0.1, 0.6, 0.5, 0.2], y)},
        "ffpp+self-blend": {"a": _evaluation("within-set", "ffpp", ["self_blend"], [0.1, 0.2, 0.3, 0.9], y),
                            "b": _evaluation("cross-manipulation", "ffpp", ["Deepfakes"], [0.1, 0.2, 0.3, 0.4], y),
                            "c": _evaluation("cross-dataset", "dfdc", ["dfdc"], [0.1, 0.2, 0.7, 0.8], y)},
    }  # fmt: skip
    lines = side_by_side(tuple(models), evaluations).splitlines()
    assert "AUC (dataset fakes)" in lines[0] and "AUC (self-blend)" in lines[0]
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[1:3]): [c.strip() for c in line.strip("|").split("|")] for line in lines[2:]}
    assert set(rows) == {("ffpp (test split)", "all (Deepfakes)"), ("dfdc", "all (dfdc)")}  # the self-blend-only row has no pair
    ff = rows[("ffpp (test split)", "all (Deepfakes)")]
    assert ff[3] == "max over tracks" and ff[4:6] == ["1.0000", "1.0000"]
    assert rows[("dfdc", "all (dfdc)")][4:6] == ["0.5000", "1.0000"]


# ---- one extraction with pseudo-fakes, shared by the module ----------------------------------------
@pytest.fixture(scope="module")
def sbi(tmp_path_factory, generated_dataset, ray_cluster):
    """The session's generated set (10 pairs) extracted with self-blended pseudo-fakes (T=16, psp_tiny)."""
    from raydf.extract import run_extraction

    root = tmp_path_factory.mktemp("sbi")
    summary = run_extraction(str(generated_dataset), str(root / "features"), sbi_cfg(), track=False)
    index = load_index(str(root / "features"))
    return {"root": root, "features": str(root / "features"), "summary": summary, "index": index, "data": generated_dataset}


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) intersection over union of two (N, 4) box arrays (x1, y1, x2, y2)."""
    w = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return w * h / (area(a) + area(b) - w * h)


def _rows(sbi):
    from raydf.store import FeatureStore

    cols = [S.VIDEO_ID, S.TRACK_ID, S.LABEL, S.METHOD, S.SOURCE_ID, S.SPLIT, S.DATASET, S.URI, S.META, S.STATUS, S.FRAME_INDICES,
            S.FACE_BOXES, S.FACE_VALID, S.CONTENT, S.STYLE]  # fmt: skip
    return {r[S.VIDEO_ID]: r for r in FeatureStore(sbi["features"]).read(cols).to_pylist()}


@pytest.mark.integration
def test_every_real_video_has_one_paired_pseudo_fake_row(sbi):
    from raydf.pseudofake import PSEUDO_METHOD, blend_seed, pseudo_video_id

    rows = _rows(sbi)
    reals = [r for r in rows.values() if r[S.LABEL] == S.REAL and r[S.STATUS] == S.STATUS_OK]
    pseudo = [r for r in rows.values() if r[S.METHOD] == PSEUDO_METHOD]
    assert len(reals) == 10 and len(pseudo) == len(reals) == sbi["summary"].pseudo_fakes
    for real in reals:
        p = rows[pseudo_video_id(real[S.VIDEO_ID])]
        assert (p[S.LABEL], p[S.SOURCE_ID], p[S.STATUS]) == (S.FAKE, real[S.VIDEO_ID], S.STATUS_OK)
        assert p[S.URI] == real[S.URI] and p[S.DATASET] == real[S.DATASET] and p[S.SPLIT] == real[S.SPLIT]
        assert p[S.FRAME_INDICES] == real[S.FRAME_INDICES]  # the same sampled frames
        meta = json.loads(p[S.META])
        assert meta["real"] == real[S.VIDEO_ID] and meta["self_blend"]["seed"] == blend_seed(real[S.VIDEO_ID], 3)
        assert np.asarray(p[S.CONTENT]).shape == (FRAMES // 16, S.CONTENT_DIM) and np.asarray(p[S.STYLE]).shape == (FRAMES, S.STYLE_DIM)
        assert not np.array_equal(np.asarray(p[S.STYLE]), np.asarray(real[S.STYLE]))
        # the blend does not move the face: the pseudo-fake's detected boxes sit on the real video's
        rb, pb = np.asarray(real[S.FACE_BOXES], float), np.asarray(p[S.FACE_BOXES], float)
        both = np.asarray(real[S.FACE_VALID]) & np.asarray(p[S.FACE_VALID])
        assert both.mean() > 0.5 and _iou(rb[both], pb[both]).min() > 0.7


@pytest.mark.integration
def test_pseudo_fake_is_the_seeded_self_blend_of_the_decoded_frames_and_changes_only_the_face(sbi):
    from raydf.faces import expand_box
    from raydf.pseudofake import blend_seed, pseudo_video_id, self_blend
    from raydf.video import read_video

    rows = _rows(sbi)
    cfg = sbi_cfg()
    real = next(r for vid, r in sorted(rows.items()) if r[S.LABEL] == S.REAL and len(set(r[S.FRAME_INDICES])) == FRAMES)
    video = read_video(real[S.URI], FRAMES)
    assert list(video.indices) == real[S.FRAME_INDICES]
    boxes, valid = np.asarray(real[S.FACE_BOXES], np.float32), np.asarray(real[S.FACE_VALID], bool)
    blend = self_blend(video.frames, boxes, valid=valid, seed=blend_seed(real[S.VIDEO_ID], cfg.pseudo_seed), cfg=cfg.self_blend)
    stored = json.loads(rows[pseudo_video_id(real[S.VIDEO_ID])][S.META])["self_blend"]
    assert blend.params == stored  # what the pipeline made is this deterministic function of (video, boxes, seed)
    changed_any = False
    for t, (frame, out) in enumerate(zip(video.frames, blend.frames)):
        changed = np.any(frame != out, axis=2)  # (H, W)
        h, w = changed.shape
        allowed = np.zeros((h, w), bool)
        if valid[t]:
            left, top, right, bottom = expand_box(boxes[t], cfg.faces.margin, w, h)
            allowed[top:bottom, left:right] = True
        assert not (changed & ~allowed).any(), f"frame {t} changed outside the face crop"
        changed_any |= bool(changed.any())
    assert changed_any


@pytest.mark.integration
def test_pseudo_fakes_are_part_of_the_store_identity(sbi, extracted):
    from raydf.extract import run_extraction
    from raydf.store import ExtractConfigMismatch

    with pytest.raises(ExtractConfigMismatch, match="pseudo_fakes"):  # into a store made without pseudo-fakes
        run_extraction(str(extracted.data), str(extracted.features), load_config(ExtractConfig, {**to_dict(extracted.cfg), "pseudo_fakes": "self-blend"}), track=False)
    with pytest.raises(ExtractConfigMismatch, match="pseudo_fakes"):  # without them into one made with them
        run_extraction(str(sbi["data"]), sbi["features"], sbi_cfg(pseudo_fakes=""), track=False)
    with pytest.raises(ExtractConfigMismatch, match="pseudo_seed"):
        run_extraction(str(sbi["data"]), sbi["features"], sbi_cfg(pseudo_seed=4), track=False)


@pytest.mark.integration
def test_a_real_video_and_its_pseudo_fake_share_a_split(sbi):
    for fakes in ("pseudo", "both"):
        plan = plan_splits(sbi["index"], small_train_cfg(fakes=fakes))
        split_of = {v: s for s, keys in plan.keys.items() for v, _ in keys}
        pseudo = [v for v in split_of if v.endswith("/self_blend")]
        assert pseudo and all(split_of[v] == split_of[v.rsplit("/", 1)[0]] for v in pseudo)
        assert all(split_of[v] == "train" for v in pseudo)  # the store has fakes of its own: evaluation uses those
        fakes_trained = {plan.labels[k] for k in plan.keys["train"]}
        assert fakes_trained == {0, 1}


# ---- the protocols on a small model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def sbi_model(sbi, tmp_path_factory, ray_cluster):
    """A small model trained on the dataset fakes and the self-blends of the module's store."""
    from raydf.train import run_training

    root = tmp_path_factory.mktemp("sbi-model")
    result = run_training(sbi["features"], small_train_cfg(fakes="both"), storage_path=str(root / "rr"), name="sbi", track=False)
    copy = root / "copy"  # the same rows in another store: a cross-dataset set that holds pseudo-fakes
    shutil.copytree(sbi["features"], copy, ignore=shutil.ignore_patterns("_raydf_lease*"))
    return {"result": result, "copy": str(copy), "root": root}


@pytest.mark.integration
def test_protocols_state_aggregation_threshold_and_leave_pseudo_fakes_out_of_other_sets(sbi, sbi_model):
    from raydf.bundle import ModelBundle
    from raydf.protocol import CROSS_DATASET, WITHIN_SET, evaluate_datasets, markdown_tables, protocol_tables

    bundle = ModelBundle.load(sbi_model["result"].model_path)
    evals = evaluate_datasets(bundle, {"gen": sbi["features"], "copy": sbi_model["copy"]})
    assert next(iter(evals)) == "within-set/gen" and {"cross-dataset/copy/blend", "cross-dataset/copy/flicker"} <= set(evals)
    within, cross = evals["within-set/gen"], evals["cross-dataset/copy"]
    assert within.protocol == WITHIN_SET and cross.protocol == CROSS_DATASET
    plan = plan_splits(sbi["index"], small_train_cfg(fakes="both"))
    assert within.predictions.ids == plan.videos("test")  # the training plan's test split, nothing else
    assert "self_blend" not in within.fake_methods and "self_blend" not in cross.fake_methods
    usable = [r for r in sbi["index"].to_pylist() if r[S.STATUS] == S.STATUS_OK and not r[S.VIDEO_ID].endswith("/self_blend")
              and np.mean(r[S.FACE_VALID]) >= 0.5]  # fmt: skip
    assert sorted(cross.predictions.ids) == sorted(r[S.VIDEO_ID] for r in usable)
    per = evals["cross-dataset/copy/flicker"]
    assert per.fakes == "flicker" and per.metrics["n_real"] == cross.metrics["n_real"]
    assert per.metrics["n_fake"] + evals["cross-dataset/copy/blend"].metrics["n_fake"] == cross.metrics["n_fake"]
    t = within.metrics["val_threshold"]
    assert all(e.metrics["val_threshold"] == t or (math.isnan(t) and math.isnan(e.metrics["val_threshold"])) for e in evals.values())
    if math.isfinite(t):
        p, y = cross.predictions.probs, cross.predictions.labels
        assert cross.metrics["accuracy_at_val_threshold"] == pytest.approx(np.mean((p >= t) == (y == 1)))
    assert cross.metrics["accuracy"] == pytest.approx(np.mean((cross.predictions.probs >= 0.5) == (cross.predictions.labels == 1)))
    tables = protocol_tables(evals)
    assert list(tables) == [WITHIN_SET, CROSS_DATASET]
    assert all(r["aggregation"] == "max over tracks" for rows in tables.values() for r in rows)
    text = markdown_tables(evaluate_datasets(bundle, {"copy": sbi_model["copy"]}, aggregation="mean"))
    assert "### cross-dataset (video score: mean over tracks; val threshold: max validation accuracy)" in text


def _with_compression(src: str, dst: Path, compression: str) -> str:
    """A copy of a store whose rows all say ``compression`` (as FF++'s c23 and c40 stores do)."""
    import pyarrow.parquet as pq

    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("_raydf_lease*"))
    for part in dst.glob("part-*.parquet"):
        t = pq.read_table(part)
        i = t.schema.get_field_index(S.COMPRESSION)
        t = t.set_column(i, t.schema.field(i), pa.array([compression] * t.num_rows, pa.string()))
        pq.write_table(t, part)
    return str(dst)


@pytest.mark.integration
def test_another_compression_of_the_training_set_is_scored_on_its_test_split(sbi, sbi_model, tmp_path):
    from raydf.bundle import ModelBundle
    from raydf.protocol import CROSS_COMPRESSION, CROSS_DATASET, evaluate_datasets

    c23 = _with_compression(sbi["features"], tmp_path / "c23", "c23")
    c40 = _with_compression(sbi["features"], tmp_path / "c40", "c40")
    bundle = ModelBundle.load(sbi_model["result"].model_path)
    evals = evaluate_datasets(bundle, {"c40": c40, "copy": sbi_model["copy"]}, train_features=c23)
    cross = evals["cross-compression/c40"]
    assert cross.protocol == CROSS_COMPRESSION and evals["cross-dataset/copy"].protocol == CROSS_DATASET  # no compression: another set
    plan = plan_splits(sbi["index"], small_train_cfg(fakes="both"))
    assert cross.predictions.ids == plan.videos("test")  # the training test split, read from the other store
    within = evaluate_datasets(bundle, {"gen": sbi["features"]})["within-set/gen"]
    np.testing.assert_allclose(cross.predictions.probs, within.predictions.probs)  # same features here: same scores
    moved = evaluate_datasets(bundle, {"copy": sbi_model["copy"]}, train_features=str(tmp_path / "moved"))["cross-dataset/copy"]
    assert math.isnan(moved.metrics["val_threshold"]) and math.isnan(moved.metrics["accuracy_at_val_threshold"])  # reported as n/a
    assert moved.metrics["roc_auc"] == evals["cross-dataset/copy"].metrics["roc_auc"]  # the rest does not need the training store


@pytest.mark.integration
def test_evaluate_command_logs_one_table_per_protocol(sbi, sbi_model, capsys):
    import mlflow

    from raydf import cli

    uri = f"sqlite:///{sbi_model['root'] / 'mlflow.db'}"
    args = cli.build_parser().parse_args(["evaluate", "--model", str(sbi_model["result"].model_path), "--features", f"gen={sbi['features']}",
                                          "--features", f"copy={sbi_model['copy']}", "--tracking-uri", uri, "--json", "--explain", "2"])  # fmt: skip
    assert cli._HANDLERS["evaluate"](args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["evaluations"]["within-set/gen"]["aggregation"] == "max" and out["threshold_rule"] == "max validation accuracy"
    client = mlflow.MlflowClient(uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.data.tags["raydf.stage"] == "evaluate" and run.data.params["aggregation"] == "max"
    assert "within-set/gen_roc_auc" in run.data.metrics and "cross-dataset/copy/flicker_n_fake" in run.data.metrics
    arts = {f.path for f in client.list_artifacts(run.info.run_id, "protocols")}
    assert arts == {"protocols/within-set.json", "protocols/cross-dataset.json", "protocols/tables.md"}
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="protocols/cross-dataset.json", tracking_uri=uri)
    table = json.loads(Path(local).read_text())
    assert "aggregation" in table["columns"] and len(table["data"]) == 3  # all fakes, blend, flicker
    # explanations of a handful of evaluated videos (the report's future work: what triggered the verdict)
    explained = [f.path for f in client.list_artifacts(run.info.run_id, "explanations")]
    assert len(explained) == 2
    files = {f.path.rsplit("/", 1)[-1] for f in client.list_artifacts(run.info.run_id, explained[0])}
    assert "explanation.json" in files and any(f.startswith("heatmap_frame") and f.endswith(".png") for f in files)


# ---- slow: the cross-family protocol ----------------------------------------------------------------
@pytest.mark.integration
@pytest.mark.slow
def test_cross_manipulation_protocol_trains_on_one_family_and_tests_on_the_other(sbi, tmp_path, ray_cluster):
    from raydf.bundle import ModelBundle
    from raydf.protocol import CROSS_MANIPULATION, evaluate_datasets
    from raydf.train import run_training

    cfg = small_train_cfg(methods=["blend"], max_epochs=4, val_fraction=0.2, test_fraction=0.4)  # a few test pairs of each family
    result = run_training(sbi["features"], cfg, storage_path=str(tmp_path / "rr"), name="blend-only", track=False)
    assert result.excluded["other_method"] > 0  # the flicker fakes never reached training or validation
    evals = evaluate_datasets(ModelBundle.load(result.model_path), {"gen": sbi["features"]})
    within, cross = evals["within-set/gen"], evals[f"{CROSS_MANIPULATION}/gen"]
    assert within.fake_methods == ("blend",) and cross.fake_methods == ("flicker",)
    reals = lambda e: sorted(i for i, y in zip(e.predictions.ids, e.predictions.labels) if y == S.REAL)  # noqa: E731
    assert reals(cross) == reals(within)  # the same test reals, the held-out family's test fakes
    plan = plan_splits(sbi["index"], cfg)
    test_sources = set(plan.videos("test"))
    assert all(f.split("_")[0] in test_sources for f, y in zip(cross.predictions.ids, cross.predictions.labels) if y == S.FAKE)
    m = cross.metrics
    print(f"\n[cross-manipulation] trained on blend, tested on flicker: ROC-AUC {m['roc_auc']:.3f} "
          f"({m['n_fake']} fakes, {m['n_real']} reals, max over tracks)")  # fmt: skip
    assert m["n_fake"] > 0 and m["n_real"] > 0 and np.isfinite(m["roc_auc"])


@pytest.mark.integration
@pytest.mark.slow
@pytest.mark.long  # short version: the pseudo-fake and cross-manipulation tests above; 3 seeds: benchmarks/generalisation.py
def test_trained_on_self_blends_only_it_finds_an_unseen_family_of_another_seed(tmp_path_factory, ray_cluster):
    """Issue 15's bar: real videos + their self-blends only, never a generated fake -> ROC-AUC >= 0.8 on held-out flicker fakes."""
    import pyarrow.compute as pc

    from raydf.bundle import ModelBundle
    from raydf.datasets import build_manifest
    from raydf.extract import run_extraction
    from raydf.protocol import evaluate_datasets
    from raydf.synth import make_dataset
    from raydf.train import run_training

    root = tmp_path_factory.mktemp("acceptance")
    make_dataset(root / "train", videos=24, seed=11)
    make_dataset(root / "heldout", videos=12, seed=99, families=("flicker",))
    manifest = build_manifest(str(root / "train"))
    reals = manifest.filter(pc.equal(manifest[S.LABEL], S.REAL))  # the generated fakes are not even extracted
    run_extraction(str(root / "train"), str(root / "sbi"), sbi_cfg(pseudo_seed=0), manifest=reals, track=False)
    run_extraction(str(root / "heldout"), str(root / "held"), sbi_cfg(pseudo_fakes=""), track=False)
    cfg = small_train_cfg(fakes="pseudo", methods=["self_blend"], max_epochs=30, batch_size=8, lr=3e-4, val_fraction=0.25, test_fraction=0.0,
                          mixup_prob=0.0)  # SBI's recipe (measured, seeds 42/1/2: 0.98/0.92/0.89; with the report's mixup 0.88/0.90/0.86)
    result = run_training(str(root / "sbi"), cfg, storage_path=str(root / "rr"), name="sbi-only", track=False)
    evals = evaluate_datasets(ModelBundle.load(result.model_path), {"heldout": str(root / "held")})
    m = evals["cross-dataset/heldout"].metrics
    print(f"\n[self-blend only -> held-out flicker] ROC-AUC {m['roc_auc']:.3f}, AP {m['average_precision']:.3f}, "
          f"EER {m['eer']:.3f} ({m['n_fake']} fakes, {m['n_real']} reals, max over tracks; best epoch {result.best_epoch})")  # fmt: skip
    assert evals["cross-dataset/heldout"].fake_methods == ("flicker",) and m["n_fake"] == 12 and m["n_real"] == 12
    assert m["roc_auc"] >= 0.8
