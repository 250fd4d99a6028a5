"""The model's life in the MLflow registry: log the trained CYWS as a pyfunc, register it, promote it.

`register_checkpoint()` (the `register` stage) logs `models/cyws.pt` as an MLflow pyfunc model into
the training run (so one run holds the training metrics, the evaluation metrics and the model),
registers it as a new version of `register.model_name`, tags the version with the evaluation metrics,
the git revision and the model's DVC md5, points the `challenger` alias at it, and moves `champion`
to it when its `register.primary_metric` beats the current champion's by more than
`register.promote_margin` (and reaches `register.ap_floor`). The decision and its reason go to
`registry/registration.json`. `promote_version()` moves an alias by hand. Aliases only, never the
deprecated stages.

The served model takes `{"image_a": H×W×3 uint8, "image_b": H'×W'×3 uint8}` (RGB) and returns
`{"boxes_a": [[x1,y1,x2,y2],…], "scores_a": […], "boxes_b": …, "scores_b": …}` in each image's own
pixels (xyxy, x2/y2 exclusive). See docs/SERVING.md.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
import tempfile
import warnings
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Optional

from spotdiff.errors import SpotdiffError

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_NAME_IN_RUN = "model"
METRIC_TAG_PREFIX = "metric."
CHAMPION = "champion"
CHALLENGER = "challenger"

# What the served model imports (besides spotdiff itself, which the serving environment must have
# installed: `pip install .` in this repo, or the Docker image). Pinned to the versions installed here.
_SERVING_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "numpy", "scipy", "pillow",
                          "opencv-python-headless", "scikit-image", "kornia", "pyyaml")


# ---------------------------------------------------------------- the pyfunc model

try:  # mlflow is a hard dependency, but keep `import spotdiff.registry` cheap to reason about.
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object  # type: ignore[assignment,misc]


def _as_image(value: Any, name: str):
    import numpy as np

    arr = np.asarray(value)
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise SpotdiffError(f"input {name}: expected an H×W×3 RGB image, got shape {tuple(arr.shape)}; "
                            "send {\"inputs\": {\"image_a\": [[[r,g,b],…],…], \"image_b\": …}}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_list(x: Any) -> list:
    import numpy as np

    return np.asarray(x, dtype=np.float64).tolist()


# No type hints on `predict`: the input (a dict of two uint8 tensors) is validated by the TensorSpec
# signature given at logging; MLflow's type-hint validation has no form for it (it would warn at every import,
# on stderr, before a command's one-line error: silenced here, for this class only).
with warnings.catch_warnings(record=True):  # recorded and dropped (MLflow resets the filters inside)
    class CywsPyfuncModel(_PythonModel):  # type: ignore[misc,valid-type]
        """MLflow pyfunc wrapper: loads the logged checkpoint and runs `CywsDetector` on an image pair."""

        def load_context(self, context) -> None:
            from spotdiff.methods.learned import CywsDetector
            from spotdiff.models.cyws import load_model

            model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], map_location="cpu")
            model.eval()
            self._detector = CywsDetector(model)

        def predict(self, context, model_input, params: Optional[dict] = None):
            if not isinstance(model_input, dict) or not {"image_a", "image_b"} <= set(model_input):
                raise SpotdiffError("model input: expected a mapping with image_a and image_b")
            img_a = _as_image(model_input["image_a"], "image_a")
            img_b = _as_image(model_input["image_b"], "image_b")
            boxes_a, scores_a, boxes_b, scores_b = self._detector.detect(img_a, img_b)
            return {"boxes_a": _as_list(boxes_a), "scores_a": _as_list(scores_a),
                    "boxes_b": _as_list(boxes_b), "scores_b": _as_list(scores_b)}


MODEL_CODE = '''"""spotdiff CYWS change detector as an MLflow pyfunc (needs spotdiff installed)."""
import mlflow

from spotdiff.registry import CywsPyfuncModel

mlflow.models.set_model(CywsPyfuncModel())
'''


def model_signature():
    """Two named uint8 tensors of shape (-1, -1, 3): the pair of RGB images, any sizes."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype("uint8"), (-1, -1, 3), "image_a"),
                     TensorSpec(np.dtype("uint8"), (-1, -1, 3), "image_b")])
    return ModelSignature(inputs=inputs)


def input_example(size: int = 64) -> dict:
    """A small deterministic pair: a grey image and the same image with one bright square."""
    import numpy as np

    a = np.full((size, size, 3), 96, dtype=np.uint8)
    b = a.copy()
    b[size // 4: size // 2, size // 4: size // 2] = 230
    return {"image_a": a, "image_b": b}


def pip_requirements() -> list[str]:
    """The serving dependencies, pinned to the installed versions (given explicitly: fast to log)."""
    reqs = []
    for dist in _SERVING_DISTRIBUTIONS:
        try:
            version = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version.split('+')[0]}")
    return reqs


# ---------------------------------------------------------------- inputs and provenance


def read_json(path: str | Path, what: str, rerun: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: {what} not found; {rerun}")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SpotdiffError(f"{path}: not valid JSON ({exc}); {rerun}") from None


def flatten_metrics(obj: Any, prefix: str = "") -> dict[str, float]:
    """{"cyws": {"coco_inpainted": {"all": {"ap50": 0.4}}}} -> {"cyws/coco_inpainted/all/ap50": 0.4}.

    Only numeric leaves are kept (booleans and strings are not metrics).
    """
    out: dict[str, float] = {}
    if isinstance(obj, dict):
        for key, value in obj.items():
            out.update(flatten_metrics(value, f"{prefix}/{key}" if prefix else str(key)))
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool) and prefix:
        value = float(obj)
        if value == value and value not in (float("inf"), float("-inf")):  # no NaN/inf
            out[prefix] = value
    return out


def _path_exists(obj: Any, path: str) -> bool:
    for part in path.split("/"):
        if not isinstance(obj, dict) or part not in obj:
            return False
        obj = obj[part]
    return True


def git_revision(root: Path) -> dict[str, Any]:
    """{"commit": sha or None, "dirty": bool or None} for the repo at `root`.

    Without git (e.g. the Docker image, built with no .git) env SPOTDIFF_GIT_COMMIT is used if set.
    """
    import os

    fallback = {"commit": os.environ.get("SPOTDIFF_GIT_COMMIT") or None, "dirty": None}
    if fallback["commit"] == "unknown":
        fallback["commit"] = None
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=20)
        if sha.returncode != 0:
            return fallback
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=20)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
        return {"commit": sha.stdout.strip(), "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return fallback


def _file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def model_md5(root: Path, model_path: Path) -> dict[str, Optional[str]]:
    """The model's md5 as recorded in dvc.lock (the stage output that produced it), else of the file.

    Returns {"md5", "source": "dvc.lock" | "file", "stage": stage name or None}.
    """
    import yaml

    try:
        rel = model_path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = None
    lock = root / "dvc.lock"
    if rel is not None and lock.is_file():
        try:
            data = yaml.safe_load(lock.read_text()) or {}
        except yaml.YAMLError:
            data = {}
        for stage, info in (data.get("stages") or {}).items():
            for out in (info or {}).get("outs") or []:
                if isinstance(out, dict) and out.get("path") == rel and out.get("md5"):
                    return {"md5": out["md5"], "source": "dvc.lock", "stage": stage}
    return {"md5": _file_md5(model_path), "source": "file", "stage": None}


# ---------------------------------------------------------------- the champion rule


def decide(new_value: float, champion: Optional[dict], margin: float, floor: float,
           metric: str) -> tuple[bool, str]:
    """Whether the new version becomes champion, and why (one sentence)."""
    if new_value < floor:
        return False, (f"{metric} = {new_value:.4f} is below register.ap_floor = {floor:.4f}; "
                       "not promoted")
    if champion is None:
        return True, f"no current champion; {metric} = {new_value:.4f} reaches the floor {floor:.4f}"
    old = champion.get("value")
    if old is None:
        return False, (f"the current champion (version {champion['version']}) has no recorded {metric}; "
                       "kept it — promote by hand with `spotdiff promote VERSION` if wanted")
    if new_value > old + margin:
        return True, (f"{metric} = {new_value:.4f} beats champion version {champion['version']} "
                      f"({old:.4f}) by {new_value - old:+.4f} > margin {margin:.4f}")
    return False, (f"{metric} = {new_value:.4f} does not beat champion version {champion['version']} "
                   f"({old:.4f}) by more than margin {margin:.4f} (difference {new_value - old:+.4f})")


def _champion_info(client, name: str, metric: str) -> Optional[dict]:
    from mlflow.exceptions import MlflowException

    try:
        mv = client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None  # no registered model yet, or no champion alias
    raw = (mv.tags or {}).get(METRIC_TAG_PREFIX + metric)
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        value = None
    return {"version": int(mv.version), "value": value, "run_id": mv.run_id}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


# ---------------------------------------------------------------- the register stage


def log_pyfunc(checkpoint: Path):
    """Log `checkpoint` (our format) as the pyfunc model into the active run; returns its ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        # "Models from code": the model is this small script (copied into the logged model), not a
        # pickled object, so loading it unpickles nothing.
        code = Path(tmp) / "spotdiff_pyfunc.py"
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(code),
            artifacts={CHECKPOINT_ARTIFACT: str(Path(checkpoint).resolve())},
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
        )


def register_checkpoint(params: Any, model_path: str | Path, train_info_path: str | Path,
                        metrics_path: str | Path, out_path: str | Path,
                        root: str | Path | None = None) -> dict:
    """Log, register, tag, alias and (maybe) promote; write and return the registration record."""
    from spotdiff.fsutil import write_json_atomic
    from spotdiff.tracking import find_repo_root, portable_uri, redact_uri, setup_mlflow

    model_path = Path(model_path)
    if not model_path.is_file():
        raise SpotdiffError(f"{model_path}: trained model not found; run the train stage first "
                            "(dvc repro train)")
    train_info = read_json(train_info_path, "training summary", "run the train stage first (dvc repro train)")
    run_id = train_info.get("mlflow_run_id") if isinstance(train_info, dict) else None
    if not run_id:
        raise SpotdiffError(f"{train_info_path}: no mlflow_run_id; rerun the train stage (dvc repro train)")
    metrics_raw = read_json(metrics_path, "evaluation metrics", "run the evaluate stage first "
                            "(dvc repro evaluate)")
    metrics = flatten_metrics(metrics_raw)
    reg = params.register
    metric = reg.primary_metric
    if metric not in metrics:
        node: Any = metrics_raw
        for part in metric.split("/"):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None and _path_exists(metrics_raw, metric):
            raise SpotdiffError(f"{metrics_path}: {metric} (register.primary_metric) is null — not "
                                "measurable on that test set (no ground truth?); pick another metric")
        known = ", ".join(sorted(metrics)[:12]) or "none"
        raise SpotdiffError(f"{metrics_path}: no metric {metric} (register.primary_metric); known: {known}; "
                            "fix register.primary_metric or make evaluate produce it")
    new_value = metrics[metric]

    root = Path(root) if root else find_repo_root()
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    setup_mlflow(params, root)
    uri = mlflow.get_tracking_uri()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        logged = client.get_run(run_id).data.metrics
    except MlflowException:
        raise SpotdiffError(
            f"{train_info_path}: MLflow run {run_id} is not in the tracking store {redact_uri(uri)}; "
            "set MLFLOW_TRACKING_URI to the store the train stage used, or rerun it (dvc repro train)"
        ) from None

    git = git_revision(root)
    md5 = model_md5(root, model_path)
    champion_before = _champion_info(client, reg.model_name, metric)

    with mlflow.start_run(run_id=run_id):
        missing = {k: v for k, v in metrics.items() if logged.get(k) != v}  # evaluate logs them too
        if missing:
            mlflow.log_metrics(missing)
        info = log_pyfunc(model_path)
        mlflow.set_tags({"spotdiff.git_commit": git["commit"] or "unknown",
                         "spotdiff.model_md5": md5["md5"]})
    mv = mlflow.register_model(info.model_uri, reg.model_name)
    version = str(mv.version)

    tags = {METRIC_TAG_PREFIX + k: f"{v:.6g}" for k, v in metrics.items()}
    tags.update({
        "git_commit": git["commit"] or "unknown",
        "git_dirty": "unknown" if git["dirty"] is None else str(git["dirty"]).lower(),
        "dvc_model_md5": md5["md5"],
        "dvc_model_md5_source": md5["source"],
        "primary_metric": metric,
    })
    for key, value in tags.items():
        client.set_model_version_tag(reg.model_name, version, key, value)
    client.set_registered_model_alias(reg.model_name, CHALLENGER, version)

    promote, reason = decide(new_value, champion_before, reg.promote_margin, reg.ap_floor, metric)
    if promote:
        client.set_registered_model_alias(reg.model_name, CHAMPION, version)
        client.set_model_version_tag(reg.model_name, version, "promoted", f"auto {_now()}")
    aliases = [CHALLENGER] + ([CHAMPION] if promote else [])

    record = {
        "model_name": reg.model_name,
        "version": int(version),
        "model_uri": f"models:/{reg.model_name}/{version}",
        "logged_model_uri": info.model_uri,
        "mlflow_run_id": run_id,
        "tracking_uri": portable_uri(uri, root),
        "aliases": aliases,
        "decision": "promoted" if promote else "kept",
        "reason": reason,
        "primary_metric": {"name": metric, "value": new_value},
        "promote_margin": reg.promote_margin,
        "ap_floor": reg.ap_floor,
        "champion_before": champion_before,
        "champion_after": (int(version) if promote
                           else (champion_before["version"] if champion_before else None)),
        "git": git,
        "model_md5": md5,
        "metrics": metrics,
        "registered_at": _now(),
    }
    write_json_atomic(out_path, record)
    return record


# ---------------------------------------------------------------- promotion by hand


def promote_version(params: Any, version: str | int, alias: str = CHAMPION,
                    root: str | Path | None = None) -> dict:
    """Point `alias` of `register.model_name` at `version`.

    Returns {"model_name", "version", "alias", "previous"} (previous: the version it pointed at, or None).
    """
    import mlflow  # noqa: F401
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from spotdiff.tracking import redact_uri, setup_mlflow

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
    try:
        previous: Optional[int] = int(client.get_model_version_by_alias(name, alias).version)
    except MlflowException:
        previous = None
    client.set_registered_model_alias(name, alias, text)
    client.set_model_version_tag(name, text, "promoted" if alias == CHAMPION else f"alias.{alias}",
                                 f"manual {_now()}")
    return {"model_name": name, "version": int(text), "alias": alias, "previous": previous}


# ---------------------------------------------------------------- importing a checkpoint


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
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    from spotdiff.models import official
    from spotdiff.models.cyws import model_from_checkpoint, read_checkpoint, save_model
    from spotdiff.tracking import redact_uri, setup_mlflow

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
    source_md5 = _file_md5(path)
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
        model_md5 = _file_md5(converted)
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
        f"{origin}: {path.name} (md5 {source_md5}), converted to spotdiff-cyws/1; "
        f"{cfg['backbone']}, {cfg['attention_layers']}×{cfg['attention']}, "
        f"scSE {'on' if cfg['scse'] else 'off'}, {cfg['image_size']} px"))
    previous = None
    if alias != "none":
        try:
            previous = int(client.get_model_version_by_alias(name, alias).version)
        except MlflowException:
            previous = None
        client.set_registered_model_alias(name, alias, version)
        client.set_model_version_tag(name, version, "promoted" if alias == CHAMPION else f"alias.{alias}",
                                     f"import {_now()}")
    return {"model_name": name, "version": int(version), "model_uri": f"models:/{name}/{version}",
            "alias": None if alias == "none" else alias, "previous": previous, "run_id": run.info.run_id,
            "tracking_uri": redact_uri(uri), "tags": tags}
