"""The evaluate stage's MLflow side: which training run to log into (from the training summary),
checked before the long part, and the logging itself (metrics in batches, files as artifacts)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Sequence

from spotdiff.fsutil import file_digest
from spotdiff.params import Params
from spotdiff.tracking import recorded_run, redact_uri, setup_mlflow, store_errors


def mlflow_run_id(train_info: Path | None, warn: Callable[[str], None],
                  model: Path | str | None = None) -> str | None:
    """The training run to log into (from the train stage's `train_run.json`), or None with a warning
    line when there is none to trust (see `spotdiff.tracking.recorded_run`); a `model` that is a file
    must be the one the record describes (compared by md5)."""
    if train_info is None:
        return None
    md5 = file_digest(Path(model)) if model is not None and Path(model).is_file() else None
    return recorded_run(train_info, md5, "the evaluation is not logged to MLflow",
                        "rerun the train stage (`dvc repro -f train`) or pass --no-mlflow", warn)


def check_run(params: Params, run_id: str, train_info: Path, warn: Callable[[str], None] | None = None,
              model: Path | str | None = None) -> str:
    """The run to log into, checked before the long part: `run_id` when the tracking store holds it;
    else (a clone + `dvc pull`: the training run lives in another store) a warning line and a new run
    of the experiment tagged with the model's md5, which `register` then finds by that md5."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    setup_mlflow(params)
    uri = mlflow.get_tracking_uri()
    with store_errors(uri, "looking up the training run"):
        client = MlflowClient(tracking_uri=uri)
        try:
            client.get_run(run_id)
            return run_id
        except MlflowException:
            pass
        md5 = file_digest(Path(model)) if model is not None and Path(model).is_file() else None
        (warn or print)(f"warning: {train_info}: MLflow run {run_id} is not in the tracking store "
                        f"{redact_uri(uri)} (a clone? set MLFLOW_TRACKING_URI to the store the train "
                        "stage used to log there); the evaluation is logged into a new run"
                        + (f" tagged with the model's md5 {md5}" if md5 else ""))
        with mlflow.start_run(run_name=f"evaluate {md5[:8] if md5 else 'model'}") as started:
            mlflow.set_tags({"spotdiff.model_md5": md5 or "unknown", "spotdiff.training_run_missing": run_id})
        return started.info.run_id


def log_to_mlflow(run_id: str, flat: dict[str, float], out: Path, files: Sequence[Path]) -> None:
    """Log `flat` metrics and `files` (under `out`) as artifacts `eval/...` into run `run_id`."""
    import mlflow
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    items = [Metric(k, v, now, 0) for k, v in flat.items()]
    with store_errors(uri, "logging the evaluation"):
        for i in range(0, len(items), 1000):  # MLflow's batch limit
            client.log_batch(run_id, metrics=items[i:i + 1000])
        for f in files:
            rel = f.parent.relative_to(out)
            sub = "eval" if str(rel) == "." else f"eval/{rel.as_posix()}"
            client.log_artifact(run_id, str(f), artifact_path=sub)
