"""The `register` stage (`spotdiff register`): the trained model becomes a version in the MLflow registry.

Reads: `params.register`, `params.mlflow`; the model (`models/cyws.pt`), the evaluation metrics
(`eval/metrics.json`) and the training run's `models/train_run.json` (which MLflow run trained
this model).
Writes: a new version of `register.model_name` (the model logged as a pyfunc into the training run,
tagged with its metrics, git revision and DVC md5), alias `challenger` on it, and `champion` when its
`register.primary_metric` beats the current champion's by more than `register.promote_margin` and
reaches `register.ap_floor`. Files: `<out>` (the DVC output: what was registered — model md5, metric,
rule; the same bytes whenever the model and metrics are) and `<record>` (default
`registry/registration.json`: this registration's version, aliases, decision and reason; it depends
on the registry's state, so it is not a DVC output).

If `train_run.json` is missing, names another model (e.g. the train stage was restored from DVC's
run cache) or a run this store does not hold (a clone + `dvc pull`), the model is logged into the
latest run tagged with its md5 (evaluate's), else a new one, with a warning. A model file already
registered (same md5) is not registered again (decision `unchanged`); a locked store is one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import typer

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

    from spotdiff.params import Params

RECORD = "registration.json"
FALLBACK = "the model is logged into the run tagged with its md5, else a new MLflow run"


def _metric_path_exists(obj: Any, path: str) -> bool:
    for part in path.split("/"):
        if not isinstance(obj, dict) or part not in obj:
            return False
        obj = obj[part]
    return True


def read_metrics(metrics_path: Path, metric: str) -> dict[str, float]:
    """The flattened metrics; a one-line error when `metric` is not among them."""
    from spotdiff.errors import SpotdiffError
    from spotdiff.metricsfile import flatten_metrics
    from spotdiff.registry.provenance import read_json

    raw = read_json(metrics_path, "evaluation metrics", "run the evaluate stage first (dvc repro evaluate)")
    metrics = flatten_metrics(raw)
    if metric not in metrics:
        if _metric_path_exists(raw, metric):
            raise SpotdiffError(f"{metrics_path}: {metric} (register.primary_metric) is null — not "
                                "measurable on that test set (no ground truth?); pick another metric")
        known = ", ".join(sorted(metrics)[:12]) or "none"
        raise SpotdiffError(f"{metrics_path}: no metric {metric} (register.primary_metric); known: {known}; "
                            "fix register.primary_metric or make evaluate produce it")
    return metrics


def training_run(run_info_path: Path, model_md5: str, client: MlflowClient, uri: str, exp_id: str,
                 warn: Callable[[str], None]) -> str | None:
    """The MLflow run that trained this model, per `train_run.json`; else the latest run of the
    experiment tagged with the model's md5 (evaluate makes one when the training run is not in this
    store, e.g. after a clone + `dvc pull`); None when there is none to trust."""
    from mlflow.exceptions import MlflowException

    from spotdiff.tracking import recorded_run, redact_uri

    run_id = recorded_run(run_info_path, model_md5, FALLBACK, "rerun the train stage (dvc repro -f train)",
                          warn)
    if run_id is not None:
        try:
            client.get_run(run_id)
            return run_id
        except MlflowException:
            warn(f"warning: {run_info_path}: MLflow run {run_id} is not in the tracking store "
                 f"{redact_uri(uri)} (a clone? set MLFLOW_TRACKING_URI to the store the train stage "
                 f"used to log there); {FALLBACK}")
    found = client.search_runs([exp_id], filter_string=f"tags.`spotdiff.model_md5` = '{model_md5}'",
                               order_by=["attributes.start_time DESC"], max_results=1)
    return found[0].info.run_id if found else None


def run(params: Params, model: str | Path, run_info: str | Path, metrics: str | Path, out: str | Path,
        record: str | Path | None = None, root: str | Path | None = None,
        warn: Callable[[str], None] = lambda line: None) -> dict:
    """Register the model (see the module docstring); returns the registration record."""
    import mlflow
    from mlflow.tracking import MlflowClient

    from spotdiff.errors import SpotdiffError
    from spotdiff.fsutil import file_digest, write_json_atomic
    from spotdiff.registry.versions import register_version
    from spotdiff.tracking import find_repo_root, portable_uri, setup_mlflow, store_errors

    model, run_info, metrics_path, out = Path(model), Path(run_info), Path(metrics), Path(out)
    record_path = Path(record) if record else out.parent / RECORD
    if not model.is_file():
        raise SpotdiffError(f"{model}: trained model not found; run the train stage first (dvc repro train)")
    reg = params.register
    values = read_metrics(metrics_path, reg.primary_metric)
    root = Path(root) if root else find_repo_root()
    md5 = file_digest(model)

    exp_id = setup_mlflow(params, root)
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def new_run() -> str:
        with mlflow.start_run(run_name=f"register {md5[:8]}") as started:
            mlflow.set_tag("spotdiff.model_md5", md5)
        return started.info.run_id

    with store_errors(uri, "registering the model"):
        run_id = training_run(run_info, md5, client, uri, exp_id, warn)
        result = register_version(params, model, run_id, values, root, file_md5=md5, make_run=new_run)
    if result["decision"] == "unchanged":
        warn(f"register: {result['reason']}")
    result["tracking_uri"] = portable_uri(uri, root)
    write_json_atomic(record_path, result)
    write_json_atomic(out, {"model_name": reg.model_name, "model_md5": md5,
                            "primary_metric": {"name": reg.primary_metric, "value": values[reg.primary_metric]},
                            "promote_margin": reg.promote_margin, "ap_floor": reg.ap_floor,
                            "record": record_path.name})
    return result


def register_cmd(
    params: Path = typer.Option(Path("params.yaml"), help="params file; reads `register` and `mlflow`"),
    model: Path = typer.Option(Path("models/cyws.pt"), help="trained checkpoint (train stage)"),
    run_info: Path = typer.Option(Path("models/train_run.json"), "--run-info",
                                  help="the train stage's run record (its mlflow_run_id gets the model)"),
    metrics: Path = typer.Option(Path("eval/metrics.json"), help="evaluation metrics (evaluate stage)"),
    out: Path = typer.Option(Path("registry/registered.json"),
                             help="what was registered (model md5, metric, rule): the DVC output"),
    record: Path = typer.Option(Path("registry/registration.json"),
                                help="this registration: version, aliases, decision and reason"),
) -> None:
    """Register the trained model in MLflow (alias challenger; champion when it beats the current one)."""
    from spotdiff.params import load_params

    result = run(load_params(params), model, run_info, metrics, out, record=record,
                 warn=lambda line: typer.echo(line, err=True))
    metric = result["primary_metric"]
    typer.echo(f"register: {result['model_name']} version {result['version']} "
               f"({metric['name']} = {metric['value']:.4f}), aliases {', '.join(result['aliases'])}; "
               f"{result['decision']}: {result['reason']} -> {record}")


def register(app: typer.Typer) -> None:
    app.command("register")(register_cmd)
