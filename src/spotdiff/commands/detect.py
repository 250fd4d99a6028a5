"""`spotdiff detect A B`: box the changes between two images, write annotated PNGs, a panel and JSON.

Everything is validated (paths, images, mask, params, method, model, options, output locations)
before anything is computed or written; each output file is written atomically. Bad input → one
line on stderr and exit code 2, and no output files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer


def _writable_location(path: Path, what: str) -> None:
    """Check that `path` (a file to create) can be written: its nearest existing parent is a
    writable folder and `path` itself is not a folder."""
    from spotdiff.errors import SpotdiffError

    if path.is_dir():
        raise SpotdiffError(f"{path}: {what} is a directory; pass a file name")
    parent = path.parent
    while not parent.exists():
        if parent.parent == parent:
            break
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise SpotdiffError(f"{parent}: is a file, so {path} cannot be created; choose another {what}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise SpotdiffError(f"{parent}: not writable; choose another {what} location")


def _resolved(path: Path) -> Path:
    """`path.resolve()`, or its absolute path when links loop (the loader names that problem)."""
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def output_paths(path_a: Path, path_b: Path, out: Path, json_path: Optional[Path]) -> dict[str, Path]:
    """Where `spotdiff detect` writes: <stem>.boxes.png for A and B, a panel and the JSON report."""
    from spotdiff.errors import SpotdiffError

    sa, sb = path_a.stem, path_b.stem
    if sa == sb:
        name_a, name_b = f"{sa}.a.boxes.png", f"{sb}.b.boxes.png"
    else:
        name_a, name_b = f"{sa}.boxes.png", f"{sb}.boxes.png"
    paths = {
        "boxes_a": out / name_a,
        "boxes_b": out / name_b,
        "panel": out / f"{sa}_vs_{sb}.panel.png",
        "json": json_path if json_path is not None else out / f"{sa}_vs_{sb}.json",
    }
    if out.exists() and not out.is_dir():
        raise SpotdiffError(f"{out}: --out must be a directory, but this is a file; choose another --out")
    inputs = {_resolved(path_a), _resolved(path_b)}
    for key, p in paths.items():
        if _resolved(p) in inputs:
            raise SpotdiffError(f"{p}: output would overwrite an input image; choose another --out/--json")
        _writable_location(p, "--json" if key == "json" else "--out")
    return paths


def detect(
    image_a: str = typer.Argument(..., metavar="A", help="First image (PNG, JPEG, WebP, TIFF, ...)."),
    image_b: str = typer.Argument(
        ..., metavar="B", help="Second image; any size (boxes come back in its own pixels)."),
    method: str = typer.Option(
        "ssim", "--method", metavar="NAME", help="ssim (pixel-wise, no training) or cyws (learned)."),
    model: Optional[str] = typer.Option(
        None, "--model", metavar="REF",
        help="cyws: checkpoint (ours or the authors' published .ckpt) or models:/NAME@ALIAS; "
             "default: the registry champion, else models/cyws.pt."),
    out: str = typer.Option(
        ".", "--out", metavar="DIR", help="Folder for <stem>.boxes.png, the panel and (default) the JSON."),
    json_file: Optional[str] = typer.Option(
        None, "--json", metavar="FILE", help="JSON report path (default <out>/<A>_vs_<B>.json)."),
    top_k: Optional[str] = typer.Option(
        None, "--top-k", metavar="N", help="Keep at most N boxes per image (highest scores)."),
    min_score: Optional[str] = typer.Option(
        None, "--min-score", metavar="S", help="Drop boxes scoring below S."),
    ignore_mask: Optional[str] = typer.Option(
        None, "--ignore-mask", metavar="MASK",
        help="Mask image the size of A; white regions are never reported."),
    align: Optional[str] = typer.Option(
        None, "--align", metavar="MODE",
        help="auto (register B onto A when features support it, else compare as is), homography "
             "(always register) or none; default: ssim.align (auto)."),
    params_file: Optional[str] = typer.Option(
        None, "--params", metavar="FILE",
        help="params.yaml to read (default ./params.yaml, else built-in defaults)."),
    engine: str = typer.Option(
        "auto", "--engine", metavar="NAME",
        help="cyws: auto (ONNX Runtime on a CPU, eager on a GPU), eager, onnxruntime, channels_last, "
             "compile or bf16 (see BENCHMARKS.md)."),
) -> int:
    """Find what changed between two images and box it in both."""
    import json
    import time
    import warnings

    from spotdiff.detect import prepare, run
    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import atomic_paths
    from spotdiff.imageio import write_png_to
    from spotdiff.render import draw_boxes, heatmap_overlay, side_by_side

    t0 = time.perf_counter()
    if params_file is not None and not Path(params_file).is_file():
        raise SpotdiffError(f"{params_file}: params file not found; check --params")
    paths = output_paths(Path(image_a), Path(image_b), Path(out), Path(json_file) if json_file else None)
    req = prepare(image_a, image_b, method=method, model=model, params=params_file, top_k=top_k,
                  min_score=min_score, ignore_mask=ignore_mask, align=align, engine=engine)
    with warnings.catch_warnings():  # registration fallbacks come back as notes, printed below
        warnings.simplefilter("ignore", RuntimeWarning)
        report, dets = run(req, keep_maps=True)

    # ---- everything below only writes
    detector = req.detector
    shown = detector.display(dets, req.top_k)  # the method's own rule for what people see
    ann_a = draw_boxes(req.img_a, shown.boxes_a, shown.labels_a, shown.scores_a)
    ann_b = draw_boxes(req.img_b, shown.boxes_b, shown.labels_b, shown.scores_b)
    tiles = [ann_a, ann_b]
    captions = [f"A: {req.path_a.name}  {req.img_a.shape[1]}x{req.img_a.shape[0]}",
                f"B: {req.path_b.name}  {req.img_b.shape[1]}x{req.img_b.shape[0]}"]
    for overlay in detector.overlays(req.img_a, req.img_b, dets, shown):  # difference map, attention
        image = req.img_a if overlay.image == "a" else req.img_b
        tiles.append(heatmap_overlay(image, overlay.heat, alpha=0.55, vmin=overlay.vmin, vmax=overlay.vmax,
                                     mask=overlay.mask))
        captions.append(overlay.caption)
    model_txt = f" ({report['model']})" if report["model"] else ""
    count = (f"top {len(shown)} of {len(dets)} boxes {detector.display_rule}" if detector.display_rule
             else f"{len(dets)} change(s)")
    header = (f"spotdiff detect | method {req.method}{model_txt} | {count}"
              + (f" | align {dets.extras['align']}" if "align" in dets.extras else ""))
    panel = side_by_side(tiles, header=header, captions=captions)
    report["outputs"] = {k: str(v) for k, v in paths.items()}
    tw = time.perf_counter()
    # All or nothing: every output goes to a temporary sibling; the four are renamed into place only
    # when all were written (a full disk, a file-size limit or Ctrl-C leaves none of them).
    try:
        with atomic_paths(paths) as tmp:
            write_png_to(tmp["boxes_a"], ann_a)
            write_png_to(tmp["boxes_b"], ann_b)
            write_png_to(tmp["panel"], panel)
            report["timings"]["write_s"] = round(time.perf_counter() - tw, 4)
            report["timings"]["total_s"] = round(time.perf_counter() - t0, 4)
            tmp["json"].write_text(json.dumps(report, indent=2) + "\n")
    except OSError as exc:  # disk full, file-size limit, read-only or special file system
        where = exc.filename or out
        for final in paths.values():  # name the output, not its temporary sibling
            if exc.filename and Path(exc.filename).parent == final.parent:
                where = final if Path(exc.filename).name.startswith(f".{final.name}.") else final.parent
                break
        raise SpotdiffError(f"{where}: cannot write the outputs ({exc.strerror or exc}); nothing was "
                            "written; free space or choose another --out / --json") from None

    for note in dets.extras.get("notes", []):
        typer.echo(f"note: {note}", err=True)
    typer.echo(f"{len(dets)} change(s) found by {req.method} in {report['timings']['total_s']:.2f} s")
    for i, (box, score) in enumerate(zip(dets.boxes_a, dets.scores_a)):
        if i >= 10:
            typer.echo(f"  ... {len(dets.boxes_a) - 10} more in the JSON")
            break
        x1, y1, x2, y2 = (round(float(v)) for v in box)
        typer.echo(f"  #{dets.labels_a[i]}  A [{x1}, {y1}, {x2}, {y2}]  score {score:.2f}")
    for key in ("boxes_a", "boxes_b", "panel", "json"):
        typer.echo(f"wrote {paths[key]}")
    return 0


def register(app: typer.Typer) -> None:
    app.command("detect")(detect)
