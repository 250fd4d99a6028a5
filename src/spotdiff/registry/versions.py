"""Model versions in the MLflow registry: registering a trained model, moving an alias by hand,
importing a checkpoint made elsewhere. Aliases only, never the deprecated stages.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import file_digest
from spotdiff.models import official
from spotdiff.models.checkpoint import model_from_checkpoint, read_checkpoint, save_model
from spotdiff.registry.concurrency import promotion_lock
from spotdiff.registry.provenance import git_revision, model_md5, now
from spotdiff.registry.rule import CHALLENGER, CHAMPION, METRIC_TAG_PREFIX, champion_info, decide, tag_value
from spotdiff.registry.serving import log_pyfunc
from spotdiff.tracking import redact_uri, setup_mlflow

MODEL_FILE_MD5_TAG = "model_file_md5"
DECISION_TAG = "decision"


def versions_with_md5(client: MlflowClient, name: str, file_md5: str) -> list:
    """The versions of `name` registered from a model file with this md5 (oldest first)."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException:
        return []
    same = [mv for mv in versions
            if (mv.tags or {}).get(MODEL_FILE_MD5_TAG) == file_md5]
    return sorted(same, key=lambda mv: int(mv.version))


def _aliases_of(client: MlflowClient, name: str, version: str) -> list[str]:
    try:
        return sorted(client.get_model_version(name, version).aliases or [])
    except MlflowException:
        return []


def register_version(params: Any, model_path: Path, run_id: Optional[str], metrics: dict[str, float],
                     root: Path, file_md5: Optional[str] = None,
                     make_run: Optional[Callable[[], str]] = None) -> dict:
    """Log `model_path` as the pyfunc model into run `run_id`, register it as a new version of
    `register.model_name` (`run_id` None: into the run `make_run()` starts, only if one is needed)
    (tagged at creation with its metrics, git revision and md5s), point
    `challenger` at it and move `champion` to it when the champion rule says so. MLflow must be set
    up (`setup_mlflow`).

    A model file already registered (same md5) is not registered again: no new version, no upload.
    A version left half-done by a crash (created, no decision tag yet) is adopted: its aliases and
    decision are set now.

    Returns the record of what happened (version, aliases, decision and reason, champion before and
    after, provenance).

    The whole registration holds the model's one lock (`spotdiff.registry.concurrency.promotion_lock`),
    from the md5 look-up to the decision: two clients registering the same file make one version, and
    two new models are compared with whichever became champion first.
    """
    uri = mlflow.get_tracking_uri()
    with promotion_lock(uri, params.register.model_name):
        return _register_version(params, model_path, run_id, metrics, root, file_md5, make_run)


def _register_version(params: Any, model_path: Path, run_id: Optional[str], metrics: dict[str, float],
                      root: Path, file_md5: Optional[str], make_run: Optional[Callable[[], str]]) -> dict:
    reg = params.register
    metric = reg.primary_metric
    new_value = metrics[metric]
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    git = git_revision(root)
    md5 = model_md5(root, model_path)
    file_md5 = file_md5 or file_digest(model_path)
    record = {
        "model_name": reg.model_name,
        "primary_metric": {"name": metric, "value": new_value},
        "promote_margin": reg.promote_margin,
        "ap_floor": reg.ap_floor,
        "champion_before": champion_info(client, reg.model_name, metric),
        "git": git,
        "model_md5": md5,
        "metrics": metrics,
        "registered_at": now(),
    }

    existing = versions_with_md5(client, reg.model_name, file_md5)
    done = [mv for mv in existing if (mv.tags or {}).get(DECISION_TAG)]
    if done:
        mv = done[0]
        aliases = _aliases_of(client, reg.model_name, mv.version)
        return {**record, "version": int(mv.version), "model_uri": f"models:/{reg.model_name}/{mv.version}",
                "logged_model_uri": mv.source, "mlflow_run_id": mv.run_id, "aliases": aliases,
                "decision": "unchanged",
                "reason": (f"model md5 {file_md5} is already version {mv.version} (decision: "
                           f"{mv.tags[DECISION_TAG]}); not registered again, nothing uploaded"),
                "champion_after": (record["champion_before"] or {}).get("version")}

    tags = {METRIC_TAG_PREFIX + k: tag_value(v) for k, v in metrics.items()}
    tags.update({
        "git_commit": git["commit"] or "unknown",
        "git_dirty": "unknown" if git["dirty"] is None else str(git["dirty"]).lower(),
        "dvc_model_md5": md5["md5"],
        "dvc_model_md5_source": md5["source"],
        MODEL_FILE_MD5_TAG: file_md5,
        "primary_metric": metric,
    })
    if existing:  # a crash left this version without its aliases and decision: adopt it
        mv = existing[-1]
        version, logged_uri, run_id, adopted = str(mv.version), mv.source, mv.run_id, True
    else:
        if run_id is None:
            if make_run is None:
                raise SpotdiffError("register: no MLflow run to log the model into")
            run_id = make_run()
        logged = client.get_run(run_id).data.metrics
        with mlflow.start_run(run_id=run_id):
            missing = {k: v for k, v in metrics.items() if logged.get(k) != v}  # evaluate logs them too
            if missing:
                mlflow.log_metrics(missing)
            info = log_pyfunc(model_path)
            mlflow.set_tags({"spotdiff.git_commit": git["commit"] or "unknown",
                             "spotdiff.model_md5": file_md5})
        # Tagged in the same call that creates it: a crash afterwards leaves a version the next run
        # finds by its md5 (and adopts), never an untagged orphan.
        mv = mlflow.register_model(info.model_uri, reg.model_name, tags=tags)
        version, logged_uri, adopted = str(mv.version), info.model_uri, False
    client.set_registered_model_alias(reg.model_name, CHALLENGER, version)

    # Read the champion, decide and move the alias (under the caller's lock: a client registering at
    # the same time compares against whoever won).
    champion_before = record["champion_before"] = champion_info(client, reg.model_name, metric)
    promote, reason = decide(new_value, champion_before, reg.promote_margin, reg.ap_floor, metric)
    if adopted:
        reason = f"adopted version {version}, left without a decision by an interrupted run; {reason}"
    if promote:
        client.set_registered_model_alias(reg.model_name, CHAMPION, version)
        client.set_model_version_tag(reg.model_name, version, "promoted", f"auto {now()}")
    decision = "promoted" if promote else "kept"
    client.set_model_version_tag(reg.model_name, version, DECISION_TAG, decision)  # the last step
    return {
        **record,
        "version": int(version),
        "model_uri": f"models:/{reg.model_name}/{version}",
        "logged_model_uri": logged_uri,
        "mlflow_run_id": run_id,
        "aliases": [CHALLENGER] + ([CHAMPION] if promote else []),
        "decision": decision,
        "reason": reason,
        "champion_after": (int(version) if promote
                           else (champion_before["version"] if champion_before else None)),
    }


def promote_version(params: Any, version: str | int, alias: str = CHAMPION,
                    root: str | Path | None = None) -> dict:
    """Point `alias` of `register.model_name` at `version`.

    Returns {"model_name", "version", "alias", "previous"} (previous: the version it pointed at, or None).
    """
    name = params.register.model_name
    text = str(version).strip()
    if not text.isdigit() or int(text) < 1:
        raise SpotdiffError(f"version {version!r}: not a model version number; give a positive integer "
                            "(see registry/registration.json or `mlflow ui`)")
    if not alias or not all(c.isalnum() or c in "_-" for c in alias) or alias.lower() == "latest":
        raise SpotdiffError(f"alias {alias!r}: use letters, digits, '_' or '-' (and not 'latest')")
    setup_mlflow(params, root)
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        client.get_model_version(name, text)
    except MlflowException:
        raise SpotdiffError(f"model {name} version {text}: not in the registry at {redact_uri(uri)}; "
                            "pick an existing version (registry/registration.json lists the latest)"
                            ) from None
    with promotion_lock(uri, name):  # not in the middle of an automatic promotion's read-decide-write
        try:
            previous: Optional[int] = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        client.set_registered_model_alias(name, alias, text)
    client.set_model_version_tag(name, text, "promoted" if alias == CHAMPION else f"alias.{alias}",
                                 f"manual {now()}")
    return {"model_name": name, "version": int(text), "alias": alias, "previous": previous}


IMPORT_ALIASES = (CHAMPION, CHALLENGER, "none")


def import_checkpoint(params: Any, path: str | Path, name: str | None = None, alias: str = CHALLENGER,
                      root: str | Path | None = None) -> dict:
    """Register a checkpoint made elsewhere — the authors' published file or one of ours — as a new
    version of `name` (default `register.model_name`), pointing `alias` at it.

    The file is converted to our format (`save_model`), so every consumer reads one format, and
    logged as the pyfunc model into a run of its own (`import <file name>`). The version is tagged
    with its origin, the source file's md5, the converted file's md5 and, for the published
    R50 / 3×CoAM / scSE model, the paper's AP@0.5 (`paper_ap50.<test set>`). No `metric.*` tags: the
    paper's numbers are not measured on our test sets, so the `register` stage's champion rule
    never compares a trained model against them (an imported champion stays until `spotdiff
    promote`). Returns the record printed by `spotdiff import-checkpoint`.
    """
    path = Path(path)
    name = name or params.register.model_name
    if alias not in IMPORT_ALIASES:
        raise SpotdiffError(f"--alias {alias!r}: use one of {', '.join(IMPORT_ALIASES)}")
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        raise SpotdiffError(f"--name {name!r}: use letters, digits, '_', '-' or '.'")
    ckpt = read_checkpoint(path)  # everything about the file is checked before MLflow is touched
    model = model_from_checkpoint(ckpt, path)
    published = official.published_state_dict(ckpt) is not None
    facts = official.provenance(ckpt) if published else {}
    del ckpt
    source_md5 = file_digest(path)
    cfg = model.config
    reference_model = published and (cfg["backbone"], cfg["attention"], cfg["attention_layers"],
                                     cfg["scse"]) == ("resnet50", "coam", 3, True)
    origin = ("CYWS authors' published checkpoint (Sachdeva & Zisserman 2023)" if published
              else "spotdiff checkpoint")

    setup_mlflow(params, root)
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with tempfile.TemporaryDirectory(prefix="spotdiff-import-") as tmp:
        converted = Path(tmp) / "cyws.pt"
        save_model(model, converted)
        model_md5 = file_digest(converted)
        tags = {"origin": origin, "source_file": path.name, "source_md5": source_md5,
                "source_format": (f"pytorch-lightning {facts.get(official.LIGHTNING_VERSION_KEY, '?')}"
                                  if published else "spotdiff-cyws/1"),
                "model_md5": model_md5}
        tags.update({f"source_{k}": str(v) for k, v in facts.items() if k in ("epoch", "global_step")})
        if reference_model:
            tags.update({f"paper_ap50.{k}": f"{v:.2f}" for k, v in official.PAPER_AP50.items()})
        with mlflow.start_run(run_name=f"import {path.name}") as run:
            mlflow.log_params({f"model.{k}": v for k, v in cfg.items()})
            mlflow.set_tags({f"spotdiff.{k}": v for k, v in tags.items()})
            info = log_pyfunc(converted)
    mv = mlflow.register_model(info.model_uri, name)
    version = str(mv.version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.update_model_version(name, version, description=(
        f"{origin}: {path.name} (md5 {source_md5}), converted to spotdiff-cyws/1; {model.summary()}"))
    previous = None
    if alias != "none":
        try:
            previous = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, "promoted" if alias == CHAMPION else f"alias.{alias}",
                                     f"import {now()}")
    return {"model_name": name, "version": int(version), "model_uri": f"models:/{name}/{version}",
            "alias": None if alias == "none" else alias, "previous": previous, "run_id": run.info.run_id,
            "tracking_uri": redact_uri(uri), "tags": tags}
