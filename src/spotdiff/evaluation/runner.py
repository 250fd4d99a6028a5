"""What the evaluate stage runs: the test sets found (discovery), their pairs in batches, every method
on every pair (the run loop), keeping the ground truth, each method's top boxes and a few samples.

Every pair is read once and given to every method (`Detector.detect_batch`: the learned method runs
a batch of `evaluate.batch_size` pairs in one forward pass); the top `evaluate.max_boxes` boxes per
image by score are kept (no NMS, no score threshold: the paper's protocol). Detectors come from the
registry of methods (`spotdiff.methods`) by the names in `evaluate.methods`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spotdiff.data.testsets import find_testsets
from spotdiff.errors import SpotdiffError
from spotdiff.methods import Detector, PairDetections, build_detector, is_registry_reference, method_class
from spotdiff.params import Params

TESTSET_ORDER = ("coco_inpainted", "synthtext_change", "virat_std", "kubric_change")
TITLES = {"coco_inpainted": "COCO-Inpainted", "synthtext_change": "Synthtext-Change",
          "virat_std": "VIRAT-STD", "kubric_change": "Kubric-Change"}
SUBSET_ORDER = ("small", "medium", "large", "all")


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
    # the first pairs' images, ground truth and, per method, the boxes it displays (PairDetections)
    samples: list[dict] = field(default_factory=list)


def split_name(name: str) -> tuple[str, str]:
    """Reader name -> (testset, subset): coco_inpainted_small -> (coco_inpainted, small)."""
    for subset in ("small", "medium", "large"):
        if name == f"coco_inpainted_{subset}":
            return "coco_inpainted", subset
    return name, "all"


def discover(testsets_dir: Path) -> list[tuple[str, str, str, Path]]:
    """(testset, subset, reader name, folder) of every set under `testsets_dir`, in report order."""
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


def build_detectors(params: Params, model_path: Path | str) -> dict[str, Detector]:
    """The detectors of `evaluate.methods`, by name; SpotdiffError naming the file and the fix if one
    can't run.

    The model (for the methods that need one): a checkpoint path (ours, or the authors' published
    file) or an MLflow reference (`models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/PATH`),
    read as `spotdiff detect` does.
    """
    detectors: dict[str, Detector] = {}
    for name in params.evaluate.methods:
        model = None
        if method_class(name, "evaluate.methods").uses_model:
            model = str(model_path)
            if not is_registry_reference(model) and not Path(model).is_file():
                raise SpotdiffError(f"{model}: trained model not found (evaluate.methods has {name}); "
                                    "run the train stage first (`dvc repro train`), pass --model, or "
                                    f"drop {name} from evaluate.methods")
        detectors[name] = build_detector(name, params, model=model, engine=params.evaluate.engine)
    return detectors


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


def run_set(reader: Any, row: tuple[str, str, str, Path], detectors: dict[str, Detector], params: Params,
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
        pairs = [(p.image_a, p.image_b) for p in batch]
        outputs: dict[str, list] = {}
        for m, det in detectors.items():
            t0 = time.perf_counter()
            outputs[m] = det.detect_batch(pairs)
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
            for m, det in detectors.items():
                ba, sa, bb, sb = outputs[m][j]
                ba, sa = top_k(ba, sa, cfg.max_boxes)
                bb, sb = top_k(bb, sb, cfg.max_boxes)
                res.dets[m] += [ba, bb]
                res.scores[m] += [sa, sb]
                if sample is not None:
                    sample["methods"][m] = det.display(PairDetections(ba, sa, bb, sb, size_a, size_b),
                                                       cfg.draw_top_k)
        res.pairs += len(batch)
        bar.update(len(batch))
        bar.set_postfix({m: f"{res.seconds[m] / max(res.pairs, 1):.2f}s/pair" for m in detectors})
        t_read = time.perf_counter()
    bar.close()
    return res
