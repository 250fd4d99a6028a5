"""`spotdiff detect-batch PAIRS --out DIR`: `spotdiff detect` over a folder of NAME_a/NAME_b images or a
CSV of path pairs, one model load for the whole run (see `spotdiff.batch`)."""

from __future__ import annotations

from typing import Optional

import typer


def detect_batch(
    pairs: str = typer.Argument(..., metavar="PAIRS",
                                help="A folder of NAME_a.EXT / NAME_b.EXT images, or a CSV of path pairs "
                                     "(a,b or name,a,b with a header)."),
    out: str = typer.Option(..., "--out", metavar="DIR",
                            help="Folder for <NAME>.a.boxes.png, <NAME>.b.boxes.png and report.jsonl."),
    method: str = typer.Option("ssim", "--method", metavar="NAME", help="ssim or cyws."),
    model: Optional[str] = typer.Option(
        None, "--model", metavar="REF",
        help="cyws: checkpoint or models:/NAME@ALIAS; default: the registry champion, else models/cyws.pt."),
    top_k: Optional[str] = typer.Option(None, "--top-k", metavar="N", help="Keep at most N boxes per image."),
    min_score: Optional[str] = typer.Option(None, "--min-score", metavar="S", help="Drop boxes scoring below S."),
    align: Optional[str] = typer.Option(None, "--align", metavar="MODE", help="ssim: auto, homography or none."),
    params_file: Optional[str] = typer.Option(None, "--params", metavar="FILE",
                                              help="params.yaml (default ./params.yaml, else built-in defaults)."),
    engine: str = typer.Option("auto", "--engine", metavar="NAME", help="cyws forward (see spotdiff detect)."),
) -> int:
    """Find the changes in many pairs: annotated PNGs and one JSON line per pair."""
    import warnings
    from pathlib import Path

    from spotdiff.batch import check_out, find_pairs, run_batch
    from spotdiff.detect import (
        DEFAULT_MODEL_REF,
        default_model_ref,
        parse_min_score,
        parse_top_k,
        resolve_params,
    )
    from spotdiff.errors import SpotdiffError
    from spotdiff.methods import build_detector, method_class, model_methods
    from spotdiff.methods.pixelwise import ALIGNS
    from spotdiff.params import SsimParams

    # everything the user gave is checked before the model loads or anything is written
    cls = method_class(method, "--method")
    parse_top_k(top_k)
    parse_min_score(min_score)
    if align is not None and align not in ALIGNS:
        raise SpotdiffError(f"--align: unknown value {align!r}; use one of {', '.join(ALIGNS)}")
    if model is not None and not cls.uses_model:
        raise SpotdiffError(f"--model: only used with --method {' or '.join(model_methods())}; drop it")
    if params_file is not None and not Path(params_file).is_file():
        raise SpotdiffError(f"{params_file}: params file not found; check --params")
    found = find_pairs(pairs)
    check_out(Path(out), found)
    ssim = resolve_params(params_file)
    if align is not None:
        ssim = SsimParams.model_validate({**ssim.model_dump(), "align": align})
    ref = None
    if cls.uses_model:
        ref = model or default_model_ref()
        if ref is None:
            raise SpotdiffError(f"--method {method} needs a trained model: no registry champion and no "
                                f"{DEFAULT_MODEL_REF}; pass --model PATH_OR_REGISTRY_REF")
    detector = build_detector(method, ssim, model=ref, engine=engine)  # the one model load
    with warnings.catch_warnings():  # registration fallbacks are in each line's diagnostics
        warnings.simplefilter("ignore", RuntimeWarning)
        summary = run_batch(found, detector, Path(out), method=method, model=model, ssim=ssim, top_k=top_k,
                            min_score=min_score)
    typer.echo(f"{summary['pairs']} pair(s), {summary['changes']} change(s), {summary['failed']} unreadable, "
               f"in {summary['seconds']:.1f} s by {method}" + (f" ({detector.reference})" if ref else ""))
    typer.echo(f"wrote {summary['report']} and {2 * (summary['pairs'] - summary['failed'])} PNG(s) in {out}")
    if summary["failed"]:
        typer.echo(f"detect-batch: {summary['failed']} pair(s) could not be read; their lines in "
                   f"{summary['report']} say why", err=True)
        return 1
    return 0


def register(app: typer.Typer) -> None:
    app.command("detect-batch")(detect_batch)
