"""`spotdiff lock-status` and `spotdiff check-floor`: the CI retraining rule.

CI retrains (runs `dvc repro`) only when the committed `dvc.lock` no longer matches the params or
code it records. Outputs that are merely absent (a fresh clone without the DVC cache) do not count:
those are "deleted" / "not in cache", not changes. After a retrain, `check-floor` fails the run when
the primary AP falls below `register.ap_floor`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import typer

from spotdiff.errors import SpotdiffError

ABSENT = {"deleted", "not in cache"}


def stale_stages(status: dict) -> dict[str, list[str]]:
    """From `dvc status --json`: stage -> the changes that are real (not just missing outputs)."""
    stale: dict[str, list[str]] = {}
    for stage, entries in status.items():
        reasons = []
        for entry in entries if isinstance(entries, list) else [entries]:
            if isinstance(entry, str):  # e.g. "changed command", "always changed"
                reasons.append(entry)
                continue
            for kind, changes in entry.items():
                if not isinstance(changes, dict):
                    reasons.append(kind)
                    continue
                for path, change in changes.items():
                    if isinstance(change, dict):  # params.yaml: {key: "modified"}
                        reasons += [f"{path}:{key} {value}" for key, value in change.items()]
                    elif change not in ABSENT:
                        reasons.append(f"{path} {change}")
        if reasons:
            stale[stage] = reasons
    return stale


def lock_status() -> None:
    """Exit 0 when dvc.lock matches params and code, 1 (listing the stale stages) when it does not."""
    dvc = Path(sys.executable).parent / "dvc"
    proc = subprocess.run([str(dvc), "status", "--json"], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SpotdiffError(f"dvc status failed: {proc.stderr.strip().splitlines()[-1:] or ['?']}")
    stale = stale_stages(json.loads(proc.stdout or "{}"))
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
