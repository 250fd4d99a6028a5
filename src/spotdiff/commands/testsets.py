"""`spotdiff testsets`: runs the `testsets` stage (`spotdiff.stages.testsets`)."""

from __future__ import annotations

from pathlib import Path

import typer


def testsets(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `testsets`"),
    out: Path = typer.Option(Path("data/testsets"), help="output folder (one sub-folder per test set)"),
) -> None:
    """Write the four test sets: offline stand-ins, or the official ones (downloaded and verified)."""
    import time

    from spotdiff.params import load_params
    from spotdiff.stages import testsets as stage

    cfg = load_params(params)
    start = time.perf_counter()
    listing = stage.run(cfg, out)
    seconds = time.perf_counter() - start
    for item in listing:
        tag = " (stand-in)" if item["is_standin"] else ""
        typer.echo(f"  {item['name']}{tag}: {item['pairs']} pairs in {out / item['path']}")
    typer.echo(f"testsets: {len(listing)} sets ({cfg.testsets.source}) -> {out} ({seconds:.1f} s)")


def register(app: typer.Typer) -> None:
    app.command("testsets")(testsets)
