"""The evaluate stage end to end: stand-ins from the project's generator, a tiny untrained CYWS, SSIM,
a throw-away MLflow store (fixtures: tests/conftest.py); a hand-made set whose answer is known; bad
inputs."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.mlflow_store import start_training_run
from spotdiff.cli import main

SUBSETS = ("small", "medium", "large", "all")
TESTSETS = ("coco_inpainted", "synthtext_change", "virat_std", "kubric_change")
ENTRY_KEYS = {"ap50", "coco_ap", "coco_ap50", "max_recall", "num_gt", "pairs", "false_alarms", "no_change_pairs"}


def _params(path: Path, tmp: Path, **evaluate) -> Path:
    raw = {"evaluate": {"batch_size": 4, "samples_to_draw": 2, **evaluate},
           "mlflow": {"experiment": "eval-test", "artifact_location": str(tmp / "artifacts")}}
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture
def store_dir(tmp_path, mlflow_store, monkeypatch) -> Path:
    """tmp_path, logging to `mlflow_store` (tmp_path/mlflow.db) and the cwd: the repo root for
    tracking defaults is the test's folder."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _training_run(params_path: Path) -> str:
    from spotdiff.params import load_params

    return start_training_run(load_params(params_path), metric=("best/val_loss", 1.0),
                              run_name="train-stand-in")


def test_stage_on_standins(standin_testsets, tiny_model_file, store_dir, capsys):
    from mlflow.tracking import MlflowClient

    from spotdiff.metricsfile import flatten_metrics
    from spotdiff.params import RegisterParams

    tmp = store_dir
    params = _params(tmp / "params.yaml", tmp)
    run_id = _training_run(params)
    (tmp / "train.json").write_text(json.dumps({"mlflow_run_id": run_id}))
    out = tmp / "eval"
    code = main(["evaluate", "--params", str(params), "--model", str(tiny_model_file), "--train-info",
                 str(tmp / "train.json"), "--testsets", str(standin_testsets), "--out", str(out)])
    assert code == 0, capsys.readouterr().err

    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics) == ["cyws", "ssim"]
    for method in metrics:
        assert list(metrics[method]) == list(TESTSETS)
        assert list(metrics[method]["coco_inpainted"]) == list(SUBSETS)
        for testset in TESTSETS[1:]:
            assert list(metrics[method][testset]) == ["all"]
        for testset, subsets in metrics[method].items():
            for subset, entry in subsets.items():
                assert set(entry) == ENTRY_KEYS
                assert entry["num_gt"] > 0  # the generator always draws a change
                for key in ("ap50", "coco_ap", "coco_ap50", "max_recall"):
                    assert 0.0 <= entry[key] <= 1.0, (method, testset, subset, key)
        coco = metrics[method]["coco_inpainted"]
        assert [coco[s]["pairs"] for s in SUBSETS] == [2, 2, 2, 6]
        assert coco["all"]["num_gt"] == sum(coco[s]["num_gt"] for s in SUBSETS[:3])
    # register reads metrics.json flattened with "/"; its default primary metric must be there
    flat = flatten_metrics(metrics)
    assert RegisterParams().primary_metric in flat

    for method in ("cyws", "ssim"):
        for testset in TESTSETS:
            with open(out / "plots" / f"pr_{method}_{testset}.csv") as fh:
                rows = list(csv.DictReader(fh))
            assert len(rows) == 101 and set(rows[0]) == {"recall", "precision"}
            prec = [float(r["precision"]) for r in rows]
            assert all(0 <= p <= 1 for p in prec) and prec == sorted(prec, reverse=True)
    for png in [out / "pr_curves.png"] + [out / "samples" / f"{t}.png" for t in TESTSETS]:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png

    report = (out / "report.md").read_text()
    assert "STAND-INS" in report and "NOT the official" in report
    assert "| COCO-Inpainted (stand-in) | **all** | 6 |" in report
    assert "0.630" in report and "0.890" in report  # the paper's reference column

    client = MlflowClient()
    run = client.get_run(run_id)
    for key, value in flat.items():
        assert run.data.metrics[key] == pytest.approx(value), key
    assert "eval_time/cyws/virat_std/s_per_pair" in run.data.metrics
    assert "eval_time/total_s" in run.data.metrics
    logged = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/report.md", "eval/pr_curves.png", "eval/metrics.json", "eval/timings.json", "eval/plots",
            "eval/samples"} <= logged
    assert len(client.list_artifacts(run_id, "eval/plots")) == 8
    assert len(client.list_artifacts(run_id, "eval/samples")) == 4


def _write_virat(root: Path, pairs: int = 3) -> dict:
    """A VIRAT-format set (not a stand-in) where B = A plus one bright square on a flat background
    the pixel-wise method cannot miss it."""
    from spotdiff.imageio import write_png

    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    annotations = {}
    for i in range(pairs):
        a = np.full((96, 128, 3), 90, np.uint8) + rng.integers(0, 4, (96, 128, 3), dtype=np.uint8)
        b = a.copy()
        x, y = 20 + 25 * i, 15 + 10 * i
        b[y:y + 40, x:x + 40] = (240, 240, 60)  # far brighter in grey too
        write_png(root / f"p{i}.png", a)
        write_png(root / f"p{i}_2.png", b)
        annotations[f"p{i}"] = [[x, y, x + 40, y + 40]]
    np.save(root / "annotations.npy", annotations, allow_pickle=True)
    return annotations


def test_known_answer_ssim_only(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_virat(tmp_path / "sets" / "virat")
    params = _params(tmp_path / "params.yaml", tmp_path, methods=["ssim"])
    (tmp_path / "train.json").write_text(json.dumps({"seconds": 1.0}))  # trained without tracking
    code = main(["evaluate", "--params", str(params), "--model", str(tmp_path / "absent.pt"),
                 "--train-info", str(tmp_path / "train.json"), "--testsets", str(tmp_path / "sets"),
                 "--out", str(tmp_path / "eval")])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "warning:" in err and "no mlflow_run_id" in err  # logging skipped, said so
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert list(metrics) == ["ssim"]
    entry = metrics["ssim"]["virat_std"]["all"]
    assert entry["pairs"] == 3 and entry["num_gt"] == 6  # the same box counts in both images
    assert entry["ap50"] > 0.9 and entry["max_recall"] == 1.0
    report = (tmp_path / "eval" / "report.md").read_text()
    assert "STAND-IN" not in report and "stand-in" not in report
    assert "Not evaluated" in report and "COCO-Inpainted" in report
    assert not (tmp_path / "mlruns").exists()


def _one_line_error(capsys) -> str:
    """The CLI's one error line (libraries may log their own lines, e.g. MLflow creating its DB)."""
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("spotdiff:")]
    assert len(lines) == 1 and lines[0].startswith("spotdiff: error: "), err
    assert "Traceback" not in err, err
    return lines[0]


def test_missing_model_is_exit_2(standin_testsets, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path / "params.yaml", tmp_path)
    missing = tmp_path / "models" / "cyws.pt"
    code = main(["evaluate", "--params", str(params), "--model", str(missing), "--no-mlflow",
                 "--testsets", str(standin_testsets), "--out", str(tmp_path / "eval")])
    assert code == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "train" in err
    assert not (tmp_path / "eval").exists()


def test_missing_testsets_is_exit_2(tiny_model_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    params = _params(tmp_path / "params.yaml", tmp_path)
    missing = tmp_path / "data" / "testsets"
    code = main(["evaluate", "--params", str(params), "--model", str(tiny_model_file), "--no-mlflow",
                 "--testsets", str(missing), "--out", str(tmp_path / "eval")])
    assert code == 2
    err = _one_line_error(capsys)
    assert str(missing) in err and "testsets" in err
    (tmp_path / "empty").mkdir()
    code = main(["evaluate", "--params", str(params), "--model", str(tiny_model_file), "--no-mlflow",
                 "--testsets", str(tmp_path / "empty"), "--out", str(tmp_path / "eval")])
    assert code == 2 and "holds no test set" in _one_line_error(capsys)
    assert not (tmp_path / "eval").exists()


def test_unknown_run_warns_and_logs_into_a_new_run(standin_testsets, tiny_model_file, store_dir, mlflow_store,
                                                  capsys):
    """A training run this store does not hold (a clone + `dvc pull`: it is in another machine's store)
    is a warning line, not a stop (F11 item 8): the evaluation is logged into a new run tagged with the
    model's md5, which `register` then finds."""
    import mlflow

    from spotdiff.fsutil import file_digest

    tmp = store_dir
    params = _params(tmp / "params.yaml", tmp)
    (tmp / "train.json").write_text(json.dumps({"mlflow_run_id": "0" * 32}))
    code = main(["evaluate", "--params", str(params), "--model", str(tiny_model_file), "--train-info",
                 str(tmp / "train.json"), "--testsets", str(standin_testsets), "--out", str(tmp / "eval")])
    assert code == 0
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1 and "0" * 32 in warnings[0] and "MLFLOW_TRACKING_URI" in warnings[0], err
    assert (tmp / "eval/metrics.json").is_file()
    client = mlflow.MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("eval-test").experiment_id],
                              filter_string=f"tags.`spotdiff.model_md5` = '{file_digest(tiny_model_file)}'")
    assert len(runs) == 1 and runs[0].data.metrics  # the evaluation went into the new run


def test_pooling_and_top_k_match_the_metric():
    """`compute_metrics` pools subsets exactly like one call of the metric on the concatenated lists."""
    from spotdiff.evaluation import average_precision
    from spotdiff.evaluation.runner import SetResult, top_k
    from spotdiff.evaluation.scoring import compute_metrics

    rng = np.random.default_rng(3)
    results = []
    for subset in ("small", "large"):
        r = SetResult("coco_inpainted", subset, f"coco_inpainted_{subset}", Path("."), True, pairs=3)
        for _ in range(6):
            g = rng.uniform(0, 50, (2, 2))
            r.gt.append(np.concatenate([g, g + 20], axis=1))
        d = [np.concatenate([g[:, :2] + rng.normal(0, 2, (2, 2)), g[:, 2:]], axis=1) for g in r.gt]
        s = [rng.uniform(0, 1, 2) for _ in r.gt]
        r.dets["m"], r.scores["m"] = d, s
        results.append(r)
    metrics, curves = compute_metrics(results, ["m"], 0.5, 100)
    pooled = average_precision(results[0].gt + results[1].gt, results[0].dets["m"] + results[1].dets["m"],
                               results[0].scores["m"] + results[1].scores["m"])
    assert metrics["m"]["coco_inpainted"]["all"]["ap50"] == pytest.approx(pooled.ap)
    assert metrics["m"]["coco_inpainted"]["all"]["pairs"] == 6
    assert not math.isnan(pooled.ap) and len(curves[("m", "coco_inpainted")]["recall"]) == 101
    boxes, scores = top_k(np.arange(20.0).reshape(5, 4), np.array([0.1, 0.9, 0.5, 0.9, 0.2]), 3)
    assert scores.tolist() == [0.9, 0.9, 0.5] and boxes[:, 0].tolist() == [4.0, 12.0, 8.0]


def test_outputs_are_the_same_bytes_run_after_run(tmp_path, monkeypatch, capsys):
    """Everything under --out that DVC hashes (report, metrics, curves, samples) is byte-identical
    across runs; the times go to timings.json only."""
    import hashlib

    monkeypatch.chdir(tmp_path)
    _write_virat(tmp_path / "sets" / "virat")
    params = _params(tmp_path / "params.yaml", tmp_path, methods=["ssim"])
    digests = []
    for out in ("eval1", "eval2"):
        code = main(["evaluate", "--params", str(params), "--no-mlflow", "--testsets", str(tmp_path / "sets"),
                     "--out", str(tmp_path / out)])
        assert code == 0, capsys.readouterr().err
        files = sorted(p for p in (tmp_path / out).rglob("*") if p.is_file() and p.name != "timings.json")
        assert not (tmp_path / out / ".evaluate-parts").exists()  # the resume files go when it ends
        digests.append({p.relative_to(tmp_path / out).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                        for p in files})
    assert digests[0] == digests[1] and {"report.md", "metrics.json", "pr_curves.png"} <= set(digests[0])
    report = (tmp_path / "eval1" / "report.md").read_text()
    assert "timings.json" in report and " s/pair" not in report and "DESIGN" not in report
    timings = json.loads((tmp_path / "eval1" / "timings.json").read_text())
    assert set(timings) == {"total_s", "device", "processes", "sets"} and timings["processes"] == 1
    virat = timings["sets"]["virat_std"]
    assert virat["pairs"] == 3 and set(virat["s_per_pair"]) == {"ssim"}


def test_false_alarms_are_counted_on_no_change_pairs_which_ap_leaves_out(tmp_path):
    """AP is over the pairs with a change only; on the no-change pairs, boxes scored >= 0.5 (both
    images) per pair. Subsets pool both ways; the flags survive a part file; the report shows them."""
    from spotdiff.evaluation import average_precision
    from spotdiff.evaluation.runner import BatchRecord, SetResult
    from spotdiff.evaluation.scoring import compute_metrics

    box = np.array([[10.0, 10.0, 30.0, 30.0]])
    none = np.zeros((0, 4))
    results = []
    for subset, alarm_scores in (("small", [0.9, 0.5, 0.49]), ("large", [0.7])):
        r = SetResult("coco_inpainted", subset, f"coco_inpainted_{subset}", Path("."), True, pairs=2)
        # pair 0: a change, found; pair 1: no change, with a few confident boxes in image b
        r.gt = [box, box, none, none]
        r.no_change = [False, True]
        alarms = np.tile(box, (len(alarm_scores), 1))
        r.dets["m"] = [box, box, np.zeros((0, 4)), alarms]
        r.scores["m"] = [np.array([0.8]), np.array([0.8]), np.zeros(0), np.array(alarm_scores)]
        results.append(r)
    metrics, _ = compute_metrics(results, ["m"], 0.5, 100)
    small, large, pooled = (metrics["m"]["coco_inpainted"][s] for s in ("small", "large", "all"))
    assert small["ap50"] == pytest.approx(1.0)  # the alarms on the no-change pair cost no precision
    assert small["false_alarms"] == 2.0 and large["false_alarms"] == 1.0  # 0.49 is not shown to a user
    assert pooled["false_alarms"] == 1.5 and pooled["no_change_pairs"] == 2 and pooled["pairs"] == 2
    everything = average_precision(results[0].gt, results[0].dets["m"], results[0].scores["m"])
    assert everything.ap < small["ap50"]  # pooled with the no-change pair, AP would have dropped
    # a set without no-change pairs: no figure (null), AP as before
    plain = SetResult("virat_std", "all", "virat_std", Path("."), True, pairs=1)
    plain.gt, plain.dets["m"], plain.scores["m"] = [box, box], [box, box], [np.array([0.9])] * 2
    entry = compute_metrics([plain], ["m"], 0.5, 100)[0]["m"]["virat_std"]["all"]
    assert entry["false_alarms"] is None and entry["no_change_pairs"] == 0 and entry["ap50"] == 1.0

    rec = BatchRecord([box, none], {"m": [box, none]}, {"m": [np.array([0.9]), np.zeros(0)]}, {"m": 0.1},
                      0.0, [True])
    rec.save(tmp_path / "part.npz")
    assert BatchRecord.load(tmp_path / "part.npz", ["m"]).no_change == [True]


def test_report_has_a_false_alarm_column(tmp_path, monkeypatch, capsys):
    """End to end on a VIRAT-format set with one no-change pair: metrics.json and report.md carry it."""
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "sets" / "virat"
    from spotdiff.data import standins as st

    st.write_virat_standin(root, 5, 96, 1, 0.2)  # pair 4 has no change
    params = _params(tmp_path / "params.yaml", tmp_path, methods=["ssim"])
    code = main(["evaluate", "--params", str(params), "--no-mlflow", "--testsets", str(tmp_path / "sets"),
                 "--out", str(tmp_path / "eval")])
    assert code == 0, capsys.readouterr().err
    entry = json.loads((tmp_path / "eval" / "metrics.json").read_text())["ssim"]["virat_std"]["all"]
    assert entry["pairs"] == 4 and entry["no_change_pairs"] == 1 and entry["false_alarms"] >= 0
    report = (tmp_path / "eval" / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| test set"))
    assert "no-change" in header and "SSIM false alarms" in header
    from spotdiff.metricsfile import flatten_metrics

    flat = flatten_metrics(json.loads((tmp_path / "eval" / "metrics.json").read_text()))
    assert "ssim/virat_std/all/false_alarms" in flat and "ssim/virat_std/all/ap50" in flat
