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
from spotdiff.distributed import Shard
from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_path
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
    # per pair: the set's format says nothing changed (`TestPair.no_change`); empty = no pair is one
    no_change: list[bool] = field(default_factory=list)
    dets: dict[str, list[np.ndarray]] = field(default_factory=dict)
    scores: dict[str, list[np.ndarray]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # detection time per method
    read_seconds: float = 0.0
    resumed_pairs: int = 0  # pairs whose boxes a killed run had saved (not run again)
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
        model = str(model_path) if method_class(name, "evaluate.methods").uses_model else None
        check_model(name, model)
        detectors[name] = build_detector(name, params, model=model, engine=params.evaluate.engine)
    return detectors


def check_model(method: str, model: str | None) -> None:
    """A model path that method `method` needs must exist (a registry reference is resolved later)."""
    if model is not None and not is_registry_reference(model) and not Path(model).is_file():
        raise SpotdiffError(f"{model}: trained model not found (evaluate.methods has {method}); "
                            "run the train stage first (`dvc repro train`), pass --model, or "
                            f"drop {method} from evaluate.methods")


def _as_list(items):
    return items


def _batches(reader, batches: list[list[int]], num_workers: int):
    """The TestPairs of each batch of pair indices, read in worker processes when num_workers > 0."""
    if num_workers > 0:
        from torch.utils.data import DataLoader

        yield from DataLoader(reader, batch_sampler=batches, num_workers=num_workers, collate_fn=_as_list)
        return
    for batch in batches:
        yield [reader[i] for i in batch]


@dataclass
class BatchRecord:
    """What one batch leaves for scoring: per image (a0, b0, a1, ...) the ground truth and each
    method's top boxes and scores (float64), per pair whether it is a no-change pair, and the times.
    Saved as one part file (`save`/`load`)."""

    gt: list[np.ndarray]
    dets: dict[str, list[np.ndarray]]
    scores: dict[str, list[np.ndarray]]
    seconds: dict[str, float]
    read_seconds: float
    no_change: list[bool] = field(default_factory=list)

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"gt": _concat(self.gt, 4), "gt_n": _counts(self.gt),
                                         "read_seconds": np.float64(self.read_seconds),
                                         "no_change": np.array(self.no_change, dtype=bool),
                                         "methods": np.array(list(self.dets), dtype=str)}
        for i, m in enumerate(self.dets):
            arrays[f"boxes_{i}"] = _concat(self.dets[m], 4)
            arrays[f"scores_{i}"] = _concat(self.scores[m], 0)
            arrays[f"n_{i}"] = _counts(self.dets[m])
            arrays[f"seconds_{i}"] = np.float64(self.seconds[m])
        with atomic_path(path) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path, methods: list[str]) -> BatchRecord | None:
        """The record saved at `path`, or None when it is unreadable or of other methods."""
        try:
            with np.load(path, allow_pickle=False) as z:
                if list(z["methods"]) != methods:
                    return None
                dets, scores, seconds = {}, {}, {}
                for i, m in enumerate(methods):
                    n = z[f"n_{i}"]
                    dets[m] = _split(z[f"boxes_{i}"], n)
                    scores[m] = _split(z[f"scores_{i}"], n)
                    seconds[m] = float(z[f"seconds_{i}"])
                return cls(_split(z["gt"], z["gt_n"]), dets, scores, seconds, float(z["read_seconds"]),
                           [bool(v) for v in z["no_change"]])
        except (OSError, ValueError, KeyError, EOFError):
            return None


def _concat(arrays: list[np.ndarray], width: int) -> np.ndarray:
    if not arrays:
        return np.zeros((0, width) if width else (0,), np.float64)
    return np.concatenate([np.asarray(a, np.float64) for a in arrays])


def _counts(arrays: list[np.ndarray]) -> np.ndarray:
    return np.array([len(a) for a in arrays], dtype=np.int64)


def _split(joined: np.ndarray, counts: np.ndarray) -> list[np.ndarray]:
    return [part.copy() for part in np.split(joined, np.cumsum(counts)[:-1])] if len(counts) else []


def _run_batch(batch: list, detectors: dict[str, Detector], max_boxes: int, read_seconds: float) -> BatchRecord:
    rec = BatchRecord([], {m: [] for m in detectors}, {m: [] for m in detectors}, {}, read_seconds)
    pairs = [(p.image_a, p.image_b) for p in batch]
    outputs: dict[str, list] = {}
    for m, det in detectors.items():
        t0 = time.perf_counter()
        outputs[m] = det.detect_batch(pairs)
        rec.seconds[m] = time.perf_counter() - t0
    for j, pair in enumerate(batch):
        rec.gt += [np.asarray(pair.boxes_a, np.float64).reshape(-1, 4),
                   np.asarray(pair.boxes_b, np.float64).reshape(-1, 4)]
        rec.no_change.append(bool(getattr(pair, "no_change", False)))
        for m in detectors:
            ba, sa, bb, sb = outputs[m][j]
            ba, sa = top_k(ba, sa, max_boxes)
            bb, sb = top_k(bb, sb, max_boxes)
            rec.dets[m] += [ba, bb]
            rec.scores[m] += [sa, sb]
    return rec


def run_set(reader: Any, row: tuple[str, str, str, Path], detectors: dict[str, Detector], params: Params,
            samples: int, shard: Shard = Shard(), parts: Path | None = None) -> SetResult | None:
    """Read every pair of one test set once, run every method, keep GT, top boxes and samples.

    The pairs are cut into batches of `evaluate.batch_size` in order; this process runs the batches
    `shard` owns (all of them outside a launch), each saved as a part file under `parts` (None: not
    saved) and read back instead of rerun when a killed run left it. Rank 0 gathers every batch and
    returns the set's result, in the single-process order; other ranks return None.
    """
    from tqdm import tqdm

    cfg = params.evaluate
    testset, subset, name, path = row
    size = cfg.batch_size
    batches = [list(range(i, min(i + size, len(reader)))) for i in range(0, len(reader), size)]
    mine = [b for b in range(len(batches)) if shard.owns(b)]
    methods = list(detectors)
    records: dict[int, BatchRecord] = {}
    if parts is not None:
        for b in mine:
            rec = BatchRecord.load(parts / f"{b:07d}.npz", methods)
            if rec is not None:
                records[b] = rec
    todo = [b for b in mine if b not in records]
    resumed = sum(len(batches[b]) for b in records)
    bar = tqdm(total=sum(len(batches[b]) for b in todo), desc=f"evaluate {reader.display_name}{shard.tag()}",
               unit="pair")
    done = 0
    t_read = time.perf_counter()
    try:  # (closed on an error too, so that the error's line starts a line)
        for b, batch in zip(todo, _batches(reader, [batches[b] for b in todo], cfg.num_workers)):
            rec = _run_batch(batch, detectors, cfg.max_boxes, time.perf_counter() - t_read)
            if parts is not None:
                rec.save(parts / f"{b:07d}.npz")
            records[b] = rec
            done += len(batch)
            bar.update(len(batch))
            bar.set_postfix({m: f"{sum(records[k].seconds[m] for k in todo if k in records) / done:.2f}s/pair"
                             for m in detectors})
            t_read = time.perf_counter()
    finally:
        bar.close()

    gathered = shard.gather((records, resumed))
    if gathered is None:
        return None
    merged: dict[int, BatchRecord] = {}
    for part, _ in gathered:
        merged.update(part)
    res = SetResult(testset, subset, name, path, reader.is_standin, pairs=len(reader),
                    resumed_pairs=sum(n for _, n in gathered))
    for m in methods:
        res.dets[m], res.scores[m], res.seconds[m] = [], [], 0.0
    for b in range(len(batches)):
        rec = merged[b]
        res.gt += rec.gt
        res.no_change += rec.no_change
        res.read_seconds += rec.read_seconds
        for m in methods:
            res.dets[m] += rec.dets[m]
            res.scores[m] += rec.scores[m]
            res.seconds[m] += rec.seconds[m]
    for i in range(min(samples, len(reader))):  # the first pairs, read again (a few)
        pair = reader[i]
        size_a = (pair.image_a.shape[1], pair.image_a.shape[0])
        size_b = (pair.image_b.shape[1], pair.image_b.shape[0])
        sample = {"set": name, "pair_id": pair.pair_id, "image_a": pair.image_a, "image_b": pair.image_b,
                  "gt_a": res.gt[2 * i], "gt_b": res.gt[2 * i + 1], "methods": {}}
        for m, det in detectors.items():
            shown = PairDetections(res.dets[m][2 * i], res.scores[m][2 * i], res.dets[m][2 * i + 1],
                                   res.scores[m][2 * i + 1], size_a, size_b)
            sample["methods"][m] = det.display(shown, cfg.draw_top_k)
        res.samples.append(sample)
    return res
