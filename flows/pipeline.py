"""Prefect 3 flow `spotdiff-pipeline`: the DVC stages in order, one task per stage, and a report.

Each task runs `dvc repro <stage>` in the repository (DVC decides what is stale, records params and
hashes in dvc.lock, and skips what is up to date); tasks run one after another, never concurrently,
and a file lock keeps two flow runs from sharing one workspace. `data` (downloads) and `testsets`
are retried. Parameter overrides (`{"train.max_epochs": 2}`) are written into params.yaml with a
comment-preserving YAML round-trip and validated before any stage runs, so the run is versioned the
DVC way: dvc.lock records the values each stage used; commit params.yaml + dvc.lock (and `dvc push`)
to keep it. At the end a markdown artifact (key `spotdiff-eval`) shows eval/report.md's AP table, the
MLflow run and the registry decision.

    python flows/pipeline.py run [--set train.max_epochs=2 ...] [--stages data,inpaint]
    python flows/pipeline.py serve        # deployment 'spotdiff-pipeline/spotdiff' for UI-triggered runs

See docs/ORCHESTRATION.md.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Optional

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

STAGES: tuple[str, ...] = ("data", "inpaint", "pairs", "train", "testsets", "evaluate", "register")
# Stages that touch the network (or flaky mounts) get retries; the others fail fast.
RETRIES: dict[str, int] = {"data": 3, "testsets": 2}
ARTIFACT_KEY = "spotdiff-eval"
LOCK_NAME = "spotdiff-pipeline.lock"


class PipelineError(RuntimeError):
    """A stage failed, or the flow was given something it cannot run."""


# ---------------------------------------------------------------- repo and params


def resolve_repo(repo: Optional[str]) -> Path:
    """The DVC repo to run in: `repo`, else the nearest folder above cwd with dvc.yaml, else this repo."""
    if repo:
        path = Path(repo).expanduser().resolve()
    else:
        here = Path.cwd().resolve()
        found = next((p for p in (here, *here.parents) if (p / "dvc.yaml").is_file()), None)
        path = found or Path(__file__).resolve().parent.parent
    if not (path / "dvc.yaml").is_file():
        raise PipelineError(f"{path}: no dvc.yaml here; pass repo= the folder that holds dvc.yaml")
    return path


def _parse_value(text: str) -> Any:
    """CLI `--set key=value`: the value is read as YAML (2 -> int, 1e-3 -> float, true -> bool)."""
    import yaml

    return yaml.safe_load(text)


def apply_overrides(params_path: Path, overrides: Optional[dict[str, Any]]) -> dict[str, list]:
    """Write dotted-key overrides into params.yaml (comments kept), after validating the result.

    Returns {key: [old, new]} for the keys that changed. An invalid result leaves the file untouched.
    """
    if not overrides:
        return {}
    import yaml
    from ruamel.yaml import YAML

    from spotdiff.params import params_from_dict

    rt = YAML()  # round-trip: keeps comments, key order and quoting
    rt.preserve_quotes = True
    doc = rt.load(params_path.read_text()) if params_path.is_file() else None
    if doc is None:
        from ruamel.yaml.comments import CommentedMap

        doc = CommentedMap()
    changed: dict[str, list] = {}
    for key, value in overrides.items():
        parts = [p for p in str(key).split(".") if p]
        if not parts:
            raise PipelineError(f"override {key!r}: empty key; use section.key=value")
        node = doc
        for part in parts[:-1]:
            if part not in node or node[part] is None:
                node[part] = {}
            node = node[part]
            if not hasattr(node, "keys"):
                raise PipelineError(f"override {key!r}: {part} is not a section in {params_path.name}")
        old = node.get(parts[-1]) if hasattr(node, "get") else None
        if old != value:
            changed[key] = [old, value]
        node[parts[-1]] = value
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    params_from_dict(yaml.safe_load(text) or {})  # raises SpotdiffError naming the bad key
    tmp = params_path.with_name(f".{params_path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, params_path)
    return changed


@contextlib.contextmanager
def workspace_lock(repo: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (one pipeline run at a time); fail clearly if taken."""
    import fcntl

    lock_dir = repo / ".dvc" / "tmp"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / LOCK_NAME, "w") as fh:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PipelineError(f"{repo}: another pipeline run holds this workspace; "
                                        "wait for it to finish (DVC stages never run concurrently)") from None
                time.sleep(1.0)
        try:
            fh.write(str(os.getpid()))
            fh.flush()
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stage_env() -> dict[str, str]:
    env = dict(os.environ)
    # Stage commands (`spotdiff …`, `python …`) resolve to this interpreter's environment.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


# ---------------------------------------------------------------- tasks


@task(name="dvc-repro", task_run_name="dvc repro {stage}")
def repro_stage(stage: str, repo: str, force: bool = False) -> dict:
    """Run `dvc repro <stage>` in `repo` (upstream stale stages run too); stream its output to the log."""
    logger = get_run_logger()
    cmd = [sys.executable, "-m", "dvc", "repro", stage] + (["--force", "--single-item"] if force else [])
    logger.info("%s (in %s)", " ".join(["dvc"] + cmd[3:]), repo)
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=repo, env=_stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if line.strip():
            logger.info("[%s] %s", stage, line)
    rc = proc.wait()
    seconds = round(time.monotonic() - t0, 2)
    if rc != 0:
        raise PipelineError(f"stage {stage}: `dvc repro {stage}` exited {rc} after {seconds} s; "
                            "last output:\n" + "\n".join(tail))
    skipped = any("didn't change, skipping" in ln or "is cached - skipping" in ln for ln in tail)
    return {"stage": stage, "seconds": seconds, "up_to_date": skipped and not any(
        ln.startswith("Running stage") for ln in tail)}


def _tables(markdown: str) -> list[str]:
    """Markdown tables in `markdown` (runs of lines starting with '|'), with the heading above each."""
    tables, block, heading = [], [], ""
    for line in markdown.splitlines() + [""]:
        if line.lstrip().startswith("|"):
            block.append(line)
            continue
        if block:
            tables.append((heading + "\n\n" if heading else "") + "\n".join(block))
            block = []
        if line.startswith("#"):
            heading = "#" + line  # one level deeper than in the report
    return tables


def _mlflow_section(repo: Path, train_info: dict) -> str:
    run_id = train_info.get("mlflow_run_id")
    if not run_id:
        return "No MLflow run recorded in the training summary."
    uri = train_info.get("tracking_uri")
    exp_id = train_info.get("mlflow_experiment_id") or train_info.get("experiment_id")
    try:
        from spotdiff.params import load_params
        from spotdiff.tracking import redact_uri, tracking_uri

        if not uri:
            params = load_params(repo / "params.yaml") if (repo / "params.yaml").is_file() else None
            uri = tracking_uri(params, root=repo)
        uri = redact_uri(uri)
        if exp_id is None and uri.startswith("sqlite:"):  # local: cheap; a server may be down (slow retries)
            from mlflow.tracking import MlflowClient

            exp_id = MlflowClient(tracking_uri=uri).get_run(run_id).info.experiment_id
    except Exception:  # the report must not fail because the store is elsewhere
        pass
    line = f"MLflow run `{run_id}`"
    if exp_id is not None:
        line += f" (experiment {exp_id})"
    if uri and uri.startswith(("http://", "https://")):
        page = f"experiments/{exp_id}/runs/{run_id}" if exp_id is not None else f"runs/{run_id}"
        line += f": [open in MLflow]({uri.rstrip('/')}/#/{page})"
    elif uri:
        line += f" — browse with `mlflow ui --backend-store-uri {uri}`"
    return line


@task(name="publish-report")
def publish_report(repo: str, results: list[dict], overrides: dict, report: str, train_info: str,
                   registration: str) -> str:
    """Markdown artifact `spotdiff-eval`: AP tables, MLflow run, registry decision, stage timings."""
    root = Path(repo)
    parts = ["# spotdiff pipeline", ""]
    if overrides:
        parts += ["Params overrides written to params.yaml: " +
                  ", ".join(f"`{k}`: {old!r} → {new!r}" for k, (old, new) in overrides.items()), ""]
    report_path = root / report
    if report_path.is_file():
        text = report_path.read_text()
        tables = _tables(text)
        ap_tables = [t for t in tables if "ap" in t.lower()] or tables
        parts += ["## Average precision", ""]
        parts += ["\n\n".join(ap_tables) if ap_tables else text[:4000], ""]
    else:
        parts += [f"_No {report} (the evaluate stage did not run)._", ""]
    info_path = root / train_info
    parts += ["## Tracking", ""]
    if info_path.is_file():
        try:
            parts += [_mlflow_section(root, json.loads(info_path.read_text())), ""]
        except json.JSONDecodeError:
            parts += [f"_{train_info} is not valid JSON._", ""]
    else:
        parts += [f"_No {train_info} (the train stage did not run)._", ""]
    reg_path = root / registration
    if reg_path.is_file():
        try:
            reg = json.loads(reg_path.read_text())
            parts += [f"Registry: `{reg.get('model_name')}` version {reg.get('version')} — "
                      f"**{reg.get('decision')}** ({reg.get('reason')}); aliases: "
                      f"{', '.join(reg.get('aliases', []))}", ""]
        except json.JSONDecodeError:
            pass
    parts += ["## Stages", "", "| stage | seconds | status |", "|---|---:|---|"]
    parts += [f"| {r['stage']} | {r['seconds']} | {'up to date' if r.get('up_to_date') else 'ran'} |"
              for r in results]
    markdown = "\n".join(parts) + "\n"
    artifact_id = create_markdown_artifact(markdown=markdown, key=ARTIFACT_KEY,
                                           description="spotdiff evaluation (AP@0.5) and model tracking")
    return str(artifact_id)


# ---------------------------------------------------------------- the flow


@flow(name="spotdiff-pipeline", log_prints=True)
def spotdiff_pipeline(
    overrides: Optional[dict[str, Any]] = None,
    stages: Optional[list[str]] = None,
    repo: Optional[str] = None,
    force: bool = False,
    retry_delay_seconds: float = 30.0,
    report: str = "eval/report.md",
    train_info: str = "models/train_run.json",
    registration: str = "registry/registration.json",
) -> dict:
    """Reproduce the DVC pipeline stage by stage and publish the evaluation as a markdown artifact.

    overrides: dotted params.yaml keys -> values, e.g. {"train.max_epochs": 2} (written into params.yaml).
    stages: which stages to run, in order (default: all seven); `force` reruns them even if up to date.
    """
    root = resolve_repo(repo)
    wanted = list(stages) if stages else list(STAGES)
    if not wanted:
        raise PipelineError("stages: empty list; name at least one stage")
    logger = get_run_logger()
    with workspace_lock(root):
        changed = apply_overrides(root / "params.yaml", overrides)
        if changed:
            logger.info("params.yaml overrides: %s", changed)
        results = []
        for stage in wanted:
            runner = repro_stage
            if stage in RETRIES:
                runner = repro_stage.with_options(retries=RETRIES[stage],
                                                  retry_delay_seconds=retry_delay_seconds)
            results.append(runner(stage, str(root), force))
        artifact_id = publish_report(str(root), results, changed, report, train_info, registration)
    return {"repo": str(root), "stages": results, "overrides": changed, "artifact_id": artifact_id}


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="flows/pipeline.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the flow now (ephemeral Prefect API unless PREFECT_API_URL is set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="params.yaml override, e.g. train.max_epochs=2 (repeatable)")
    run.add_argument("--stages", default="", help="comma-separated stages (default: all)")
    run.add_argument("--repo", default=None)
    run.add_argument("--force", action="store_true")
    srv = sub.add_parser("serve", help="serve deployment 'spotdiff-pipeline/spotdiff' for UI-triggered runs")
    srv.add_argument("--name", default="spotdiff")
    args = ap.parse_args(argv)
    if args.cmd == "serve":
        # limit=1: this runner starts one flow run at a time (the workspace lock is the backstop).
        spotdiff_pipeline.serve(name=args.name, limit=1)
        return 0
    overrides = {}
    for item in args.set:
        key, sep, value = item.partition("=")
        if not sep:
            ap.error(f"--set {item!r}: expected KEY=VALUE")
        overrides[key.strip()] = _parse_value(value)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] or None
    spotdiff_pipeline(overrides=overrides or None, stages=stages, repo=args.repo, force=args.force)
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
