"""`spotdiff lock-status` and `spotdiff check-floor`: the CI retraining rule.

CI retrains (runs `dvc repro`) only when the committed `dvc.lock` no longer matches the params or
code it records (`spotdiff.dvcstatus`: merely absent outputs do not count). After a retrain, `check-floor` fails the run when
the primary AP falls below `register.ap_floor`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from spotdiff.errors import SpotdiffError


def lock_status() -> None:
    """Exit 0 when dvc.lock matches params and code, 1 (listing the stale stages) when it does not."""
    from spotdiff.dvcstatus import dvc_status, stale_stages

    stale = stale_stages(dvc_status())
    if not stale:
        typer.echo("dvc.lock matches params.yaml and the code: no retraining needed")
        raise typer.Exit(0)
    typer.echo("dvc.lock is stale:")
    for stage, reasons in stale.items():
        typer.echo(f"  {stage}: {', '.join(reasons[:6])}{' …' if len(reasons) > 6 else ''}")
    raise typer.Exit(1)


def check_floor(
    params: Path = typer.Option(Path("params.yaml"), help="reads register.primary_metric and register.ap_floor"),
    metrics: Path = typer.Option(Path("eval/metrics.json"), help="the evaluate stage's metrics"),
) -> None:
    """Fail (exit 2) when the primary AP in the metrics falls below `register.ap_floor`."""
    from spotdiff.metricsfile import flatten_metrics
    from spotdiff.params import load_params

    cfg = load_params(params).register
    if not metrics.is_file():
        raise SpotdiffError(f"{metrics}: metrics not found; run `dvc repro evaluate` first")
    flat = flatten_metrics(json.loads(metrics.read_text()))
    value = flat.get(cfg.primary_metric)
    if value is None:
        raise SpotdiffError(f"{metrics}: no value for register.primary_metric {cfg.primary_metric}")
    if value < cfg.ap_floor:
        raise SpotdiffError(f"{cfg.primary_metric} = {value:.4f} is below register.ap_floor {cfg.ap_floor:.4f}; "
                            "the retrained model is worse than allowed")
    typer.echo(f"{cfg.primary_metric} = {value:.4f} >= floor {cfg.ap_floor:.4f}")


def register(app: typer.Typer) -> None:
    app.command("lock-status")(lock_status)
    app.command("check-floor")(check_floor)
