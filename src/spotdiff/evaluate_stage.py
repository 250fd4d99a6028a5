"""The `evaluate` stage: both methods on every test set, scored by the paper's protocol, with a report.

For each method in `evaluate.methods` (cyws, ssim) and each test set found under the test-set folder
(`spotdiff.data.testsets.find_testsets`: COCO-Inpainted small / medium / large, Synthtext-Change,
VIRAT-STD, Kubric-Change), every pair is read once and given to every method (CYWS in batches of
`evaluate.batch_size`); the top `evaluate.max_boxes` boxes per image by score are kept. Scores
(`spotdiff.evaluation`): VOC AP at `evaluate.iou_threshold` with both images of every pair pooled,
no NMS and no score threshold (the paper's protocol), and COCO AP@[.5:.95] (pycocotools) as a
second column. COCO-Inpainted is scored per size subset and on the three pooled ("all", the
paper's headline number).

Outputs under `--out` (each file written atomically; `plots/` and `samples/` swapped in whole):
- `metrics.json`  {method: {testset: {subset: {"ap50", "coco_ap", "coco_ap50", "max_recall", "num_gt",
  "pairs"}}}} (subset "all" for the sets without subsets; null where a set has no ground truth).
  `spotdiff.registry.flatten_metrics` joins keys with "/": `cyws/coco_inpainted/all/ap50` is the
  default `register.primary_metric`.
- `plots/pr_<method>_<testset>.csv`  the interpolated precision at 101 recall levels (pooled "all").
- `pr_curves.png`  one panel per test set, both methods.
- `report.md`  method × test set (× size) table next to the paper's reference AP; says STAND-IN
  whenever a set is one of our offline stand-ins.
- `samples/<testset>.png`  a few pairs: ground truth, CYWS top boxes after NMS, SSIM boxes.

The metrics (flattened, "/"-separated names), the report, the pictures and the CSVs are logged to the
training run named by `mlflow_run_id` in the training summary (rank 0 only); a summary without one
is skipped with a warning.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from spotdiff.errors import SpotdiffError
from spotdiff.params import Params

# The paper's CYWS AP@0.5 (DESIGN §2: R50, 3×CoAM, scSE, affine), by (testset, subset).
PAPER_AP50: dict[tuple[str, str], float] = {
    ("coco_inpainted", "small"): 0.46,
    ("coco_inpainted", "medium"): 0.79,
    ("coco_inpainted", "large"): 0.85,
    ("coco_inpainted", "all"): 0.63,
    ("synthtext_change", "all"): 0.89,
    ("virat_std", "all"): 0.54,
    ("kubric_change", "all"): 0.76,
}
TESTSET_ORDER = ("coco_inpainted", "synthtext_change", "virat_std", "kubric_change")
TITLES = {"coco_inpainted": "COCO-Inpainted", "synthtext_change": "Synthtext-Change",
          "virat_std": "VIRAT-STD", "kubric_change": "Kubric-Change"}
SUBSET_ORDER = ("small", "medium", "large", "all")
METHOD_TITLES = {"cyws": "CYWS", "ssim": "SSIM"}
CURVE_POINTS = 101
GT_COLOUR = (0, 200, 0)


# ---------------------------------------------------------------- what is evaluated


@dataclass
class SetResult:
    """Ground truth and detections of one test set (per image, pooled order a0, b0, a1, b1, ...)."""

    testset: str  # metrics key, e.g. "coco_inpainted"
    subset: str  # "small" / "medium" / "large" or "all"
    name: str  # reader name, e.g. "coco_inpainted_small"
    path: Path
    is_standin: bool
    pairs: int = 0
    gt: list[np.ndarray] = field(default_factory=list)
    dets: dict[str, list[np.ndarray]] = field(default_factory=dict)
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # detection time per method
    read_seconds: float = 0.0
    samples: list[dict] = field(default_factory=list)  # images and display boxes of the first pairs


def split_name(name: str) -> tuple[str, str]:
    """Reader name -> (testset, subset): coco_inpainted_small -> (coco_inpainted, small)."""
    for subset in ("small", "medium", "large"):
        if name == f"coco_inpainted_{subset}":
            return "coco_inpainted", subset
    return name, "all"


def discover(testsets_dir: Path) -> list[tuple[str, str, str, Path]]:
    """(testset, subset, reader name, folder) of every set under `testsets_dir`, in report order."""
    from spotdiff.data.testsets import find_testsets

    if not testsets_dir.is_dir():
        raise SpotdiffError(f"{testsets_dir}: test-set folder not found; run the testsets stage first "
                            "(`dvc repro testsets` or `spotdiff testsets --out "
                            f"{testsets_dir}`) or pass --testsets")
    found = find_testsets(testsets_dir)
    if not found:
        raise SpotdiffError(f"{testsets_dir}: holds no test set (none of the COCO-Inpainted, "
                            "Synthtext-Change, VIRAT-STD, Kubric-Change layouts); rerun the testsets stage")
    rows = [(*split_name(name), name, path) for name, path in found.items()]

    def order(row):
        testset, subset = row[0], row[1]
        t = TESTSET_ORDER.index(testset) if testset in TESTSET_ORDER else len(TESTSET_ORDER)
        return (t, testset, SUBSET_ORDER.index(subset) if subset in SUBSET_ORDER else 9)

    return sorted(rows, key=order)


def top_k(boxes: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k highest-scored boxes (stable on ties), as float64 arrays."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    order = np.argsort(-scores, kind="stable")[:k]
    return boxes[order], scores[order]


# ---------------------------------------------------------------- methods


def build_detectors(params: Params, model_path: Path | str) -> dict[str, Any]:
    """The detectors of `evaluate.methods`; SpotdiffError naming the file and the fix if one can't run.

    The CYWS model: a checkpoint path (ours, or the authors' published file) or an MLflow reference
    (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/PATH`), read as `spotdiff detect` does.
    """
    detectors: dict[str, Any] = {}
    for method in params.evaluate.methods:
        if method == "cyws":
            from spotdiff.methods.learned import CywsDetector

            ref = str(model_path)
            if not is_registry_reference(ref) and not Path(ref).is_file():
                raise SpotdiffError(f"{ref}: trained model not found (evaluate.methods has cyws); "
                                    "run the train stage first (`dvc repro train`), pass --model, or "
                                    "drop cyws from evaluate.methods")
            detectors["cyws"] = CywsDetector.from_reference(ref, engine=params.evaluate.engine)
        elif method == "ssim":
            from spotdiff.methods.pixelwise import SsimDetector

            detectors["ssim"] = SsimDetector(params.ssim)
        else:  # params validation already refuses these
            raise SpotdiffError(f"evaluate.methods: unknown method {method!r}; use cyws, ssim")
    return detectors


def is_registry_reference(model: Path | str) -> bool:
    """True for an MLflow model/run reference (models:/…, runs:/…), False for a checkpoint path."""
    return str(model).startswith(("models:/", "runs:/"))


def _as_list(items):
    return items


def _batches(reader, batch_size: int, num_workers: int):
    """Lists of up to `batch_size` TestPairs, read in worker processes when num_workers > 0."""
    if num_workers > 0:
        from torch.utils.data import DataLoader

        yield from DataLoader(reader, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                              collate_fn=_as_list)
        return
    batch = []
    for i in range(len(reader)):
        batch.append(reader[i])
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _display_boxes(method: str, boxes_a, scores_a, boxes_b, scores_b, size_a, size_b, k: int):
    """(boxes_a, labels_a, scores_a, boxes_b, labels_b, scores_b) as shown in the samples figure."""
    from spotdiff.methods.base import PairDetections

    if method == "cyws":
        from spotdiff.methods.learned import suppress

        ba, sa = suppress(boxes_a, scores_a, top_k=k)
        bb, sb = suppress(boxes_b, scores_b, top_k=k)
        det = PairDetections(ba, sa, bb, sb, size_a, size_b)
    else:  # the pixel-wise boxes are one set of regions seen in both images
        det = PairDetections(boxes_a, scores_a, boxes_b, scores_b, size_a, size_b,
                             paired=len(boxes_a) == len(boxes_b)).filter(top_k=k)
    return (det.boxes_a, det.labels_a, det.scores_a, det.boxes_b, det.labels_b, det.scores_b)


def run_set(reader, row: tuple[str, str, str, Path], detectors: dict[str, Any], params: Params,
            samples: int) -> SetResult:
    """Read every pair of one test set once, run every method, keep GT, top boxes and samples."""
    from tqdm import tqdm

    cfg = params.evaluate
    testset, subset, name, path = row
    res = SetResult(testset, subset, name, path, reader.is_standin)
    for m in detectors:
        res.dets[m], res.scores[m], res.seconds[m] = [], [], 0.0
    bar = tqdm(total=len(reader), desc=f"evaluate {reader.display_name}", unit="pair")
    t_read = time.perf_counter()
    for batch in _batches(reader, cfg.batch_size, cfg.num_workers):
        res.read_seconds += time.perf_counter() - t_read
        images_a = [p.image_a for p in batch]
        images_b = [p.image_b for p in batch]
        outputs: dict[str, list] = {}
        for m, det in detectors.items():
            t0 = time.perf_counter()
            if m == "cyws":
                outputs[m] = det.detect_batch(images_a, images_b)
            else:
                outputs[m] = [det.detect(a, b) for a, b in zip(images_a, images_b)]
            res.seconds[m] += time.perf_counter() - t0
        for j, pair in enumerate(batch):
            res.gt += [np.asarray(pair.boxes_a, np.float64).reshape(-1, 4),
                       np.asarray(pair.boxes_b, np.float64).reshape(-1, 4)]
            sample = None
            if len(res.samples) < samples:
                size_a = (pair.image_a.shape[1], pair.image_a.shape[0])
                size_b = (pair.image_b.shape[1], pair.image_b.shape[0])
                sample = {"set": name, "pair_id": pair.pair_id, "image_a": pair.image_a,
                          "image_b": pair.image_b, "gt_a": res.gt[-2], "gt_b": res.gt[-1], "methods": {}}
                res.samples.append(sample)
            for m in detectors:
                ba, sa, bb, sb = outputs[m][j]
                ba, sa = top_k(ba, sa, cfg.max_boxes)
                bb, sb = top_k(bb, sb, cfg.max_boxes)
                res.dets[m] += [ba, bb]
                res.scores[m] += [sa, sb]
                if sample is not None:
                    sample["methods"][m] = _display_boxes(m, ba, sa, bb, sb, size_a, size_b, cfg.draw_top_k)
        res.pairs += len(batch)
        bar.update(len(batch))
        bar.set_postfix({m: f"{res.seconds[m] / max(res.pairs, 1):.2f}s/pair" for m in detectors})
        t_read = time.perf_counter()
    bar.close()
    return res


# ---------------------------------------------------------------- scores


def _nan_to_none(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def score(gt: Sequence[np.ndarray], dets: Sequence[np.ndarray], scores: Sequence[np.ndarray],
          iou_threshold: float, max_boxes: int) -> tuple[dict, Any]:
    """({"ap50", "coco_ap", "coco_ap50", "max_recall", "num_gt", "pairs"}, the VOC APResult)."""
    from spotdiff.evaluation import average_precision, coco_ap

    res = average_precision(gt, dets, scores, iou_threshold=iou_threshold, max_boxes=max_boxes)
    coco = coco_ap(gt, dets, scores, max_boxes=max_boxes)
    out = {
        "ap50": _nan_to_none(res.ap),
        "coco_ap": _nan_to_none(coco["ap"]),
        "coco_ap50": _nan_to_none(coco["ap50"]),
        "max_recall": float(res.recall[-1]) if res.recall.size and res.num_gt else 0.0,
        "num_gt": int(res.num_gt),
        "pairs": len(gt) // 2,
    }
    return out, res


def pool(results: Sequence[SetResult], method: str) -> tuple[list, list, list]:
    gt, dets, scores = [], [], []
    for r in results:
        gt += r.gt
        dets += r.dets[method]
        scores += r.scores[method]
    return gt, dets, scores


def compute_metrics(results: Sequence[SetResult], methods: Sequence[str], iou_threshold: float,
                    max_boxes: int) -> tuple[dict, dict]:
    """(metrics {method: {testset: {subset: {...}}}}, curves {(method, testset): {"recall", "precision"}}).

    A test set with subsets also gets "all" (its subsets pooled); its curve is the pooled one.
    """
    by_set: dict[str, list[SetResult]] = {}
    for r in results:
        by_set.setdefault(r.testset, []).append(r)
    metrics: dict = {}
    curves: dict = {}
    for m in methods:
        metrics[m] = {}
        for testset, parts in by_set.items():
            entry: dict = {}
            for r in parts:
                if r.subset != "all":
                    entry[r.subset], _ = score(r.gt, r.dets[m], r.scores[m], iou_threshold, max_boxes)
            entry["all"], ap = score(*pool(parts, m), iou_threshold, max_boxes)
            metrics[m][testset] = entry
            curves[(m, testset)] = ap.pr_curve(CURVE_POINTS)
    return metrics, curves


# ---------------------------------------------------------------- outputs


def write_curve_csvs(folder: Path, curves: dict) -> list[Path]:
    import csv

    paths = []
    for (method, testset), curve in curves.items():
        path = folder / f"pr_{method}_{testset}.csv"
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["recall", "precision"])
            for r, p in zip(curve["recall"], curve["precision"]):
                w.writerow([f"{r:.6g}", f"{p:.6g}"])
        paths.append(path)
    return paths


def plot_curves(path: Path, curves: dict, metrics: dict, standin: dict[str, bool]) -> None:
    """One panel per test set, one line per method (interpolated precision vs recall)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from spotdiff.fsutil import atomic_path

    testsets = list(dict.fromkeys(t for _, t in curves))
    fig, axes = plt.subplots(1, len(testsets), figsize=(4.2 * len(testsets), 4.2), squeeze=False)
    for ax, testset in zip(axes[0], testsets):
        for (method, t), curve in curves.items():
            if t != testset:
                continue
            ap = metrics[method][testset]["all"]["ap50"]
            label = f"{METHOD_TITLES.get(method, method)} (AP {ap:.3f})" if ap is not None else method
            ax.plot(curve["recall"], curve["precision"], label=label, drawstyle="steps-post")
        title = TITLES.get(testset, testset) + (" (stand-in)" if standin.get(testset) else "")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def draw_samples(samples: Sequence[dict], methods: Sequence[str], header: str) -> np.ndarray | None:
    """Rows of [A, B with ground truth | A, B per method], stacked; None when there are no samples."""
    from spotdiff.render import draw_boxes, side_by_side

    rows = []
    for s in samples:
        tiles = [draw_boxes(s["image_a"], s["gt_a"], color=GT_COLOUR, show_scores=False),
                 draw_boxes(s["image_b"], s["gt_b"], color=GT_COLOUR, show_scores=False)]
        captions = ["A: ground truth", "B: ground truth"]
        for m in methods:
            ba, la, sa, bb, lb, sb = s["methods"][m]
            tiles += [draw_boxes(s["image_a"], ba, la, sa), draw_boxes(s["image_b"], bb, lb, sb)]
            title = METHOD_TITLES.get(m, m)
            captions += [f"A: {title}", f"B: {title}"]
        line = f"{s['set']}: pair {s['pair_id']}"
        line = f"{header}  |  {line}" if not rows else line  # ASCII: the default font lacks dashes
        rows.append(side_by_side(tiles, header=line, captions=captions, max_height=256))
    if not rows:
        return None
    width = max(r.shape[1] for r in rows)
    padded = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=32) for r in rows]
    return np.concatenate(padded, axis=0)


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.3f}"


def write_report(results: Sequence[SetResult], metrics: dict, methods: Sequence[str], params: Params,
                 model_info: str, seconds: dict) -> str:
    """The markdown report (returned as text)."""
    cfg = params.evaluate
    standin_sets = sorted({TITLES.get(r.testset, r.testset) for r in results if r.is_standin})
    lines = ["# spotdiff evaluation", ""]
    if standin_sets:
        every = len(standin_sets) == len({r.testset for r in results})
        which = "ALL test sets below are" if every else "These test sets are"
        lines += [f"> **STAND-INS: {which} offline stand-ins generated by spotdiff "
                  f"({', '.join(standin_sets)}), NOT the official test sets.** They have the official "
                  "on-disk formats, so the same readers and scoring run on them, but the numbers are "
                  "not comparable with the paper's reference column.", ""]
    lines += [
        f"Protocol: VOC AP@{cfg.iou_threshold:g} (all-point), both images of every pair pooled, up to "
        f"{cfg.max_boxes} boxes per image by score, no NMS, no score threshold (the paper's). "
        "COCO AP = AP@[.5:.95] from pycocotools (101-point, COCO matching), a second opinion.",
        "",
        f"Model: {model_info}. Paper reference: CYWS, ResNet-50, 3×CoAM, scSE, affine "
        "(DESIGN §2).",
        "",
    ]
    head = ["test set", "subset", "pairs"]
    for m in methods:
        t = METHOD_TITLES.get(m, m)
        head += [f"{t} AP@0.5", f"{t} COCO AP"]
    head += ["paper CYWS AP@0.5"]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|"]
    seen: list[str] = list(dict.fromkeys(r.testset for r in results))
    standin = {r.testset: r.is_standin for r in results}
    for testset in seen:
        subsets = list(metrics[methods[0]][testset])
        subsets.sort(key=lambda s: SUBSET_ORDER.index(s) if s in SUBSET_ORDER else 9)
        for subset in subsets:
            title = TITLES.get(testset, testset) + (" (stand-in)" if standin[testset] else "")
            sub = f"**{subset}**" if subset == "all" and len(subsets) > 1 else subset
            row = [title, sub, str(metrics[methods[0]][testset][subset]["pairs"])]
            for m in methods:
                entry = metrics[m][testset][subset]
                row += [_fmt(entry["ap50"]), _fmt(entry["coco_ap"])]
            ref = PAPER_AP50.get((testset, subset))
            row.append(_fmt(ref))
            lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Precision-recall curves: `pr_curves.png` (data in `plots/`); example pairs with the "
              f"ground truth (green) and each method's top {cfg.draw_top_k} boxes (CYWS after NMS): "
              "`samples/<test set>.png`.", ""]
    lines += ["## Time", "", "| test set | pairs | read s | " +
              " | ".join(f"{METHOD_TITLES.get(m, m)} s/pair" for m in methods) + " |",
              "|---|---:|---:|" + "---:|" * len(methods)]
    for r in results:
        row = [r.name, str(r.pairs), f"{r.read_seconds:.1f}"]
        row += [f"{r.seconds[m] / max(r.pairs, 1):.3f}" for m in methods]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", f"Total {seconds['total']:.1f} s on {seconds['device']}.", ""]
    missing = [TITLES[t] for t in TESTSET_ORDER if t not in seen]
    if missing:
        lines += [f"Not evaluated (no such set under the test-set folder): {', '.join(missing)}.", ""]
    return "\n".join(lines)


def check_outputs(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SpotdiffError(f"{out}: is a file; --out must be a folder")


# ---------------------------------------------------------------- MLflow


def mlflow_run_id(train_info: Path | None, warn: Callable[[str], None]) -> str | None:
    """The training run to log into, or None (with a warning line) when the summary names none."""
    import json

    if train_info is None:
        return None
    fix = "run the train stage first (`dvc repro train`) or pass --no-mlflow"
    if not train_info.is_file():
        raise SpotdiffError(f"{train_info}: training summary not found; {fix}")
    try:
        info = json.loads(train_info.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpotdiffError(f"{train_info}: not valid JSON ({exc}); {fix}") from None
    run_id = info.get("mlflow_run_id") if isinstance(info, dict) else None
    if not run_id:
        warn(f"warning: {train_info}: no mlflow_run_id (training ran without tracking); the evaluation "
             "is not logged to MLflow")
        return None
    return str(run_id)


def check_run(params: Params, run_id: str, train_info: Path) -> None:
    """SpotdiffError unless the tracking store holds `run_id` (checked before the long part)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from spotdiff.tracking import redact_uri, setup_mlflow

    setup_mlflow(params)
    import mlflow

    uri = mlflow.get_tracking_uri()
    try:
        MlflowClient(tracking_uri=uri).get_run(run_id)
    except MlflowException:
        raise SpotdiffError(f"{train_info}: MLflow run {run_id} is not in the tracking store "
                            f"{redact_uri(uri)}; set MLFLOW_TRACKING_URI to the store the train stage "
                            "used, rerun it, or pass --no-mlflow") from None


def log_to_mlflow(run_id: str, flat: dict[str, float], out: Path, files: Sequence[Path]) -> None:
    from mlflow.tracking import MlflowClient

    import mlflow

    client = MlflowClient(tracking_uri=mlflow.get_tracking_uri())
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in flat.items()]
    for i in range(0, len(items), 1000):  # MLflow's batch limit
        client.log_batch(run_id, metrics=items[i:i + 1000])
    for f in files:
        rel = f.parent.relative_to(out)
        sub = "eval" if str(rel) == "." else f"eval/{rel.as_posix()}"
        client.log_artifact(run_id, str(f), artifact_path=sub)


# ---------------------------------------------------------------- the stage


def evaluate(params: Params, model: Path | str, train_info: Path | None, testsets_dir: Path, out: Path,
             echo: Callable[[str], None] = print, warn: Callable[[str], None] | None = None) -> dict:
    """Run the stage; return the metrics dict. `train_info=None` = no MLflow logging."""
    import torch

    from spotdiff import tracking
    from spotdiff.data.testsets import open_testset
    from spotdiff.fsutil import atomic_dir, write_json_atomic, write_text_atomic
    cfg = params.evaluate
    check_outputs(out)
    # Everything that can be wrong with the inputs is found before the long part.
    rows = discover(testsets_dir)
    readers = [open_testset(path, name) for _, _, name, path in rows]
    if warn is None:
        def warn(line: str) -> None:
            print(line, file=sys.stderr)
    run_id = mlflow_run_id(train_info, warn) if tracking.is_rank_zero() else None
    if run_id:
        check_run(params, run_id, train_info)  # type: ignore[arg-type]
    detectors = build_detectors(params, model)
    methods = list(detectors)

    start = time.perf_counter()
    results = []
    per_testset_samples: dict[str, int] = {}
    for row in rows:  # COCO-Inpainted's samples are spread over its subsets
        per_testset_samples[row[0]] = per_testset_samples.get(row[0], 0) + 1
    for row, reader in zip(rows, readers):
        n = math.ceil(cfg.samples_to_draw / per_testset_samples[row[0]])
        results.append(run_set(reader, row, detectors, params, n))
    metrics, curves = compute_metrics(results, methods, cfg.iou_threshold, cfg.max_boxes)
    total = time.perf_counter() - start

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if "cyws" in detectors:
        c = detectors["cyws"].model.config
        model_info = (f"`{model}` ({c['backbone']}, {c['attention_layers']}×{c['attention']}, "
                      f"scSE {'on' if c['scse'] else 'off'}, {c['image_size']} px)")
    else:
        model_info = "not evaluated (evaluate.methods has no cyws)"
    report = write_report(results, metrics, methods, params, model_info,
                          {"total": total, "device": device})
    standin = {r.testset: r.is_standin for r in results}

    out.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out / "plots") as tmp:
        write_curve_csvs(tmp, curves)
    with atomic_dir(out / "samples") as tmp:
        from PIL import Image

        for testset in dict.fromkeys(r.testset for r in results):
            picked: list[dict] = []
            parts = [r.samples for r in results if r.testset == testset]
            for i in range(max((len(p) for p in parts), default=0)):  # interleave the subsets
                picked += [p[i] for p in parts if i < len(p)]
            title = TITLES.get(testset, testset) + (" (STAND-IN)" if standin[testset] else "")
            canvas = draw_samples(picked[:cfg.samples_to_draw], methods, title)
            if canvas is not None:
                Image.fromarray(canvas).save(tmp / f"{testset}.png")
    plot_curves(out / "pr_curves.png", curves, metrics, standin)
    write_text_atomic(out / "report.md", report)
    write_json_atomic(out / "metrics.json", metrics)

    for r in results:
        secs = ", ".join(f"{m} {r.seconds[m]:.1f} s" for m in methods)
        tag = " (stand-in)" if r.is_standin else ""
        echo(f"  {r.name}{tag}: {r.pairs} pairs, read {r.read_seconds:.1f} s, {secs}")
    for m in methods:
        for testset, entry in metrics[m].items():
            ap = entry["all"]["ap50"]
            echo(f"  {m} {testset}: AP@{cfg.iou_threshold:g} {_fmt(ap)}")

    if run_id:
        from spotdiff.metricsfile import flatten_metrics  # the register stage reads metrics.json the same way

        flat = flatten_metrics(metrics)
        for r in results:
            for m in methods:
                flat[f"eval_time/{m}/{r.name}/s_per_pair"] = r.seconds[m] / max(r.pairs, 1)
        files = [out / "report.md", out / "pr_curves.png", out / "metrics.json"]
        files += sorted((out / "plots").glob("*.csv")) + sorted((out / "samples").glob("*.png"))
        log_to_mlflow(run_id, flat, out, files)
        echo(f"  logged {len(flat)} metrics and {len(files)} files to MLflow run {run_id}")
    echo(f"evaluate: {len(methods)} method(s) × {len(results)} set(s) -> {out} ({total:.1f} s)")
    return metrics
