"""The `evaluate` stage: both methods on every test set, scored by AP, with a report and pictures.

Reads: `params.evaluate`, `params.ssim`, `params.mlflow`; the model (`models/cyws.pt` or any
checkpoint / registry reference), the test sets, and `models/train_run.json` (which MLflow run the
metrics go to).
Writes: `<out>/metrics.json`, `<out>/report.md`, `<out>/pr_curves.png`, `<out>/plots/`,
`<out>/samples/` (the same bytes whenever model, test sets and params are), and
`<out>/timings.json` (this run's times; not a DVC output). A killed run resumes from the batches
it finished (`<out>/.evaluate-parts/`). Inside a `torch.distributed` launch (`evaluate.devices` > 1,
or torchrun) each process runs its share of the batches and rank 0 scores: the same files as one
process (docs/SCALE-OUT.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from spotdiff.data.testsets import open_testset
from spotdiff.evaluation.runner import check_model, discover
from spotdiff.evaluation.stage import check_outputs, run_evaluation
from spotdiff.methods import method_class
from spotdiff.params import Params


def run(params: Params, model: str | Path, run_info: str | Path | None, testsets: str | Path,
        out: str | Path, echo: Callable[[str], None] = print,
        warn: Callable[[str], None] = print) -> dict:
    """Evaluate and write the stage's files; `run_info` None = log nothing to MLflow."""
    return run_evaluation(params, model, Path(run_info) if run_info else None, Path(testsets), Path(out),
                    echo=echo, warn=warn)


def check_inputs(params: Params, model: str | Path, testsets: str | Path, out: str | Path) -> None:
    """What `run` would refuse at its start (no test sets, no model, --out a file), checked once
    before a launch starts its processes."""
    check_outputs(Path(out))
    for _, _, name, path in discover(Path(testsets)):
        open_testset(path, name)
    for name in params.evaluate.methods:
        check_model(name, str(model) if method_class(name, "evaluate.methods").uses_model else None)
