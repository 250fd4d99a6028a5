"""The `evaluate` stage: both methods on every test set, scored by AP, with a report and pictures.

Reads: `params.evaluate`, `params.ssim`, `params.mlflow`; the model (`models/cyws.pt` or any
checkpoint / registry reference), the test sets, and `models/train_run.json` (which MLflow run the
metrics go to).
Writes: `<out>/metrics.json`, `<out>/report.md`, `<out>/pr_curves.png`, `<out>/plots/`,
`<out>/samples/` (the same bytes whenever model, test sets and params are), and
`<out>/timings.json` (this run's times; not a DVC output).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from spotdiff.evaluation.stage import run_evaluation
from spotdiff.params import Params


def run(params: Params, model: str | Path, run_info: str | Path | None, testsets: str | Path,
        out: str | Path, echo: Callable[[str], None] = print,
        warn: Callable[[str], None] = print) -> dict:
    """Evaluate and write the stage's files; `run_info` None = log nothing to MLflow."""
    return run_evaluation(params, model, Path(run_info) if run_info else None, Path(testsets), Path(out),
                    echo=echo, warn=warn)
