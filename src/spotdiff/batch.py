"""`spotdiff detect-batch`: many pairs, one detector (one model load), one JSON-lines report.

Pairs come from a folder (`NAME_a.EXT` beside `NAME_b.EXT`, any image extensions) or a CSV of path
pairs (columns `a,b` or `image_a,image_b`, an optional `name`; a header row is optional; relative
paths are taken from the CSV's folder). Every pair is listed and checked for existence before
anything is computed.

Per pair, `<out>/<NAME>.a.boxes.png` and `<out>/<NAME>.b.boxes.png` (the boxes the method shows
people, as `spotdiff detect` draws them) and one line of `<out>/report.jsonl`: `spotdiff detect
--json`'s report plus `name` and `outputs`, or `{"name", "error"}` when that pair's images cannot be
read (the run goes on). The report is written as `report.jsonl.partial` and renamed when the run
ends, so `report.jsonl` is always complete; PNGs are written atomically.
"""

from __future__ import annotations

import csv
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from spotdiff.detect import parse_min_score, parse_top_k, request_for, run
from spotdiff.errors import SpotdiffError
from spotdiff.imageio import MAX_PIXELS, load_image, write_png
from spotdiff.methods import Detector
from spotdiff.params import SsimParams
from spotdiff.render import draw_boxes

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
_SIDE = re.compile(r"^(?P<name>.+)_(?P<side>[ab])$", re.IGNORECASE)
REPORT_NAME = "report.jsonl"


@dataclass(frozen=True)
class Pair:
    name: str
    path_a: Path
    path_b: Path


def _safe_name(name: str) -> str:
    return re.sub(r"[^\w.+-]", "_", name).strip("._") or "pair"


def pairs_in_folder(folder: Path) -> list[Pair]:
    """NAME_a.* + NAME_b.* in `folder` (not recursive), sorted by NAME."""
    sides: dict[str, dict[str, list[Path]]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        m = _SIDE.match(p.stem)
        if m:
            sides.setdefault(m["name"], {"a": [], "b": []})[m["side"].lower()].append(p)
    problems = []
    pairs = []
    for name, found in sorted(sides.items()):
        for side in "ab":
            if len(found[side]) > 1:
                problems.append(f"{name}: {len(found[side])} files for side {side} "
                                f"({', '.join(p.name for p in found[side])})")
            elif not found[side]:
                other = found["b" if side == "a" else "a"][0].name
                problems.append(f"{other} has no {name}_{side}.* beside it")
        if len(found["a"]) == 1 and len(found["b"]) == 1:
            pairs.append(Pair(name, found["a"][0], found["b"][0]))
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise SpotdiffError(f"{folder}: {'; '.join(problems[:3])}{more}; name each pair NAME_a.EXT and "
                            "NAME_b.EXT, or list the pairs in a CSV")
    if not pairs:
        raise SpotdiffError(f"{folder}: no NAME_a.* / NAME_b.* image pairs found; name each pair NAME_a.png and "
                            "NAME_b.png (any image extension), or pass a CSV of path pairs")
    return pairs


def pairs_in_csv(path: Path) -> list[Pair]:
    """Rows `a,b` (or `name,a,b` with a header naming the columns); paths relative to the CSV's folder."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError) as exc:
        raise SpotdiffError(f"{path}: cannot read the CSV ({exc}); pass a UTF-8 CSV of image path pairs") from None
    cols = {"a": 0, "b": 1, "name": None}
    start = 0
    if rows:
        header = [c.strip().lower() for c in rows[0]]
        aliases = {"a": ("a", "image_a", "path_a"), "b": ("b", "image_b", "path_b"), "name": ("name",)}
        found = {k: next((header.index(x) for x in names if x in header), None) for k, names in aliases.items()}
        if found["a"] is not None and found["b"] is not None:
            cols, start = found, 1
    pairs, names = [], set()
    for i, row in enumerate(rows[start:], start=start + 1):
        cells = [c.strip() for c in row]
        need = max(c for c in cols.values() if c is not None)
        if len(cells) <= need or not cells[cols["a"]] or not cells[cols["b"]]:
            raise SpotdiffError(f"{path}: line {i} has no two image paths ({','.join(row)!r}); write one pair "
                                "per line: path_a,path_b")
        a, b = (Path(cells[cols[k]]) for k in ("a", "b"))
        a, b = (p if p.is_absolute() else path.parent / p for p in (a, b))
        name = cells[cols["name"]] if cols["name"] is not None and cols["name"] < len(cells) else ""
        name = _safe_name(name or f"{a.stem}_vs_{b.stem}")
        base, k = name, 2
        while name in names:  # the same images twice: keep both rows apart
            name, k = f"{base}-{k}", k + 1
        names.add(name)
        pairs.append(Pair(name, a, b))
    if not pairs:
        raise SpotdiffError(f"{path}: the CSV lists no pairs; write one pair per line: path_a,path_b")
    return pairs


def find_pairs(source: str | Path) -> list[Pair]:
    """The pairs of a folder or a CSV (see the module docstring); every listed file must exist."""
    source = Path(source)
    if not source.exists():
        raise SpotdiffError(f"{source}: no such folder or CSV; pass a folder of NAME_a/NAME_b images or a CSV")
    pairs = pairs_in_folder(source) if source.is_dir() else pairs_in_csv(source)
    missing = [str(p) for pair in pairs for p in (pair.path_a, pair.path_b) if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise SpotdiffError(f"{source}: listed image(s) not found: {', '.join(missing[:3])}{more}; fix the paths")
    return pairs


def check_out(out: Path, pairs: list[Pair]) -> None:
    if out.exists() and not out.is_dir():
        raise SpotdiffError(f"{out}: --out must be a folder, but this is a file; choose another --out")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpotdiffError(f"{parent}: not writable; choose another --out")
    inputs = {p.resolve() for pair in pairs for p in (pair.path_a, pair.path_b)}
    for pair in pairs:
        for side in "ab":
            if (out / f"{pair.name}.{side}.boxes.png").resolve() in inputs:
                raise SpotdiffError(f"{out}: an output would overwrite the input {pair.name}; choose another --out")


def run_batch(pairs: list[Pair], detector: Detector, out: Path, *, method: str, model: str | None,
              ssim: SsimParams, top_k: Any = None, min_score: Any = None, max_pixels: int = MAX_PIXELS,
              progress: bool = True) -> dict[str, Any]:
    """Detect on every pair with the one `detector`; writes the PNGs and report.jsonl (see the module
    docstring). Returns {"pairs", "failed", "changes", "seconds", "report"}."""
    from tqdm import tqdm

    k, smin = parse_top_k(top_k), parse_min_score(min_score)
    check_out(out, pairs)
    out.mkdir(parents=True, exist_ok=True)
    report_path = out / REPORT_NAME
    partial = out / (REPORT_NAME + ".partial")
    t0 = time.perf_counter()
    failed = changes = 0
    with open(partial, "w", encoding="utf-8") as lines:
        for pair in tqdm(pairs, desc="detect-batch", unit="pair", disable=not progress):
            line = _one(pair, detector, out, method=method, model=model, ssim=ssim, top_k=k, min_score=smin,
                        max_pixels=max_pixels)
            if "error" in line:
                failed += 1
            else:
                changes += line["num_changes"]
            lines.write(json.dumps(line) + "\n")
            lines.flush()
    os.replace(partial, report_path)
    return {"pairs": len(pairs), "failed": failed, "changes": changes,
            "seconds": round(time.perf_counter() - t0, 3), "report": str(report_path)}


def _one(pair: Pair, detector: Detector, out: Path, **kw: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        img_a = load_image(pair.path_a, max_pixels=kw["max_pixels"])
        img_b = load_image(pair.path_b, max_pixels=kw["max_pixels"])
    except SpotdiffError as exc:  # one unreadable pair does not stop the run
        return {"name": pair.name, "error": str(exc)}
    req = request_for(detector, pair.path_a, pair.path_b, img_a, img_b, method=kw["method"], model=kw["model"],
                      ssim=kw["ssim"], top_k=kw["top_k"], min_score=kw["min_score"],
                      load_s=time.perf_counter() - t0)
    report, dets = run(req)
    shown = detector.display(dets, req.top_k)
    outputs = {"boxes_a": out / f"{pair.name}.a.boxes.png", "boxes_b": out / f"{pair.name}.b.boxes.png"}
    write_png(outputs["boxes_a"], draw_boxes(img_a, shown.boxes_a, shown.labels_a, shown.scores_a))
    write_png(outputs["boxes_b"], draw_boxes(img_b, shown.boxes_b, shown.labels_b, shown.scores_b))
    return {"name": pair.name, **report, "outputs": {k: str(v) for k, v in outputs.items()}}


def read_report(path: str | Path) -> Iterator[dict[str, Any]]:
    """The lines of a report.jsonl."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)
