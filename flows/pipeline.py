"""Prefect 3 flow `spotdiff-pipeline`: the DVC stages in order, one task per stage, and a report.

Without overrides each task runs `dvc repro <stage>` in the repository (DVC decides what is stale,
records params and hashes in dvc.lock, and skips what is up to date); tasks run one after another,
never concurrently, and a file lock keeps two flow runs from sharing one workspace. `data`
(downloads) and `testsets` are retried.

With parameter overrides (`{"train.max_epochs": 2}`, e.g. from the Prefect UI) the shared working
tree is left as it was: the overrides are validated, then run as a DVC experiment in its own
temporary copy (`dvc exp run --temp --name ui-… -S key=value`), which DVC records as an experiment
commit (`dvc exp show`, `dvc exp apply ui-…` to take it). The flow opens an MLflow run for it and
links both ways: the experiment's name and commit are tags of the MLflow run (and the train stage's
run is its child, tagged with the experiment name); the MLflow run id is in the experiment commit's
message. A second run never inherits the first's overrides: each starts from params.yaml as committed.

At the end a markdown artifact (key `spotdiff-eval`) shows what this run produced: eval/report.md's
AP table (only when this run evaluated the current model; a report made for an earlier model is
marked stale, never shown next to a new run id), the MLflow run and the registry decision.

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

from spotdiff.stages import STAGES  # the one list of stages, in dvc.yaml's order

# Stages that touch the network (or flaky mounts) get retries; the others fail fast.
RETRIES: dict[str, int] = {"data": 3, "testsets": 2}
ARTIFACT_KEY = "spotdiff-eval"
PARENT_RUN_ENV = "SPOTDIFF_PARENT_RUN_ID"  # the flow's MLflow run: the train stage's run is its child
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


def apply_overrides(params_path: Path, overrides: Optional[dict[str, Any]], write: bool = True
                    ) -> dict[str, list]:
    """Validate dotted-key overrides of params.yaml (the whole result, every section); with `write`,
    write them into the file (comments kept). `write=False` only checks (the flow's experiments).

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
    if not write:
        return changed
    tmp = params_path.with_name(f".{params_path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, params_path)
    return changed


@contextlib.contextmanager
def workspace_lock(repo: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on the workspace (one pipeline run at a time); fail clearly if taken."""
    from spotdiff.fsutil import exclusive_lock

    def timed_out() -> PipelineError:
        return PipelineError(f"{repo}: another pipeline run holds this workspace; "
                             "wait for it to finish (DVC stages never run concurrently)")

    with exclusive_lock(repo / ".dvc" / "tmp" / LOCK_NAME, wait_s, timed_out, poll_s=1.0, mode="w") as fh:
        fh.write(str(os.getpid()))
        fh.flush()
        yield


def _stage_env() -> dict[str, str]:
    env = dict(os.environ)
    # Stage commands (`spotdiff …`, `python …`) resolve to this interpreter's environment.
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


# ---------------------------------------------------------------- tasks


def _stream(cmd: list[str], repo: str, label: str,
            env: Optional[dict[str, str]] = None) -> tuple[int, list[str], float]:
    """Run `cmd` in `repo`, its output streamed to the flow log; (exit code, last 40 lines, seconds)."""
    logger = get_run_logger()
    t0 = time.monotonic()
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, cwd=repo, env=env or _stage_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        tail.append(line)
        if line.strip():
            logger.info("[%s] %s", label, line)
    return proc.wait(), list(tail), round(time.monotonic() - t0, 2)


def _dvc_value(value: Any) -> str:
    """A value for `dvc exp run -S key=VALUE` (DVC reads it as YAML): JSON for all but plain strings."""
    return value if isinstance(value, str) else json.dumps(value)


def experiment_rev(repo: Path, name: str) -> Optional[str]:
    """The commit of DVC experiment `name` (its ref `refs/exps/.../<name>`), None when there is none."""
    out = subprocess.run(["git", "for-each-ref", "--format=%(refname) %(objectname)", "refs/exps"],
                         cwd=repo, capture_output=True, text=True)
    revs = [line.split()[1] for line in out.stdout.splitlines()
            if line.split() and line.split()[0].rsplit("/", 1)[-1] == name]
    return revs[-1] if revs else None


@task(name="dvc-exp-run", task_run_name="dvc exp run --temp {name}")
def run_experiment(repo: str, name: str, overrides: dict[str, Any], stages: list[str],
                   mlflow_run_id: Optional[str]) -> dict:
    """`dvc exp run --temp --name NAME -S k=v … [stages]`: the overrides applied in DVC's own copy of
    the repository, the shared working tree untouched; returns {"name", "rev", "seconds"}."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", name,
           "-m", f"spotdiff flow run {name}: MLflow run {mlflow_run_id or 'none'}"]
    for key, value in overrides.items():
        cmd += ["-S", f"{key}={_dvc_value(value)}"]
    cmd += [s for s in stages if s != "check_params"]
    env = _stage_env()
    if mlflow_run_id:
        env[PARENT_RUN_ENV] = mlflow_run_id
    get_run_logger().info("%s (in %s)", " ".join(["dvc"] + cmd[3:]), repo)
    rc, tail, seconds = _stream(cmd, repo, name, env)
    if rc != 0:
        raise PipelineError(f"experiment {name}: `dvc exp run` exited {rc} after {seconds} s; "
                            "last output:\n" + "\n".join(tail))
    rev = experiment_rev(Path(repo), name)
    if rev is None:
        raise PipelineError(f"experiment {name}: `dvc exp run` finished but no experiment ref was made")
    return {"name": name, "rev": rev, "seconds": seconds}


@task(name="dvc-repro", task_run_name="dvc repro {stage}")
def repro_stage(stage: str, repo: str, force: bool = False) -> dict:
    """Run `dvc repro <stage>` in `repo` (upstream stale stages run too); stream its output to the log."""
    logger = get_run_logger()
    from spotdiff.dvclocks import repair_rwlock

    repaired = repair_rwlock(repo)  # a dvc killed mid-write leaves its lock file unreadable
    if repaired:
        logger.warning(repaired)
    cmd = [sys.executable, "-m", "dvc", "repro", stage] + (["--force", "--single-item"] if force else [])
    logger.info("%s (in %s)", " ".join(["dvc"] + cmd[3:]), repo)
    rc, tail, seconds = _stream(cmd, repo, stage)
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


def stale_stages(repo: Path) -> set[str]:
    """Stages whose outputs no longer match their deps/params (`spotdiff.dvcstatus`'s rule); none
    when `dvc status` fails (the report must not fail for it)."""
    from spotdiff.dvcstatus import dvc_status
    from spotdiff.dvcstatus import stale_stages as changed
    from spotdiff.errors import SpotdiffError

    try:
        return set(changed(dvc_status(repo, env=_stage_env())))
    except SpotdiffError:
        return set()


def _evaluated(results: list[dict], experiment: Optional[dict], stale: set[str]) -> bool:
    """Whether the report describes the model this run left: evaluate (or register, downstream of it)
    was among the targets and is up to date."""
    if experiment is not None:
        targets = experiment.get("targets") or []
        return not targets or bool({"evaluate", "register"} & set(targets))
    ran = {r["stage"] for r in results}
    return "evaluate" not in stale and bool({"evaluate", "register"} & ran)


def _read(root: Path, rel: str, rev: Optional[str]) -> Optional[str]:
    """`rel` in the working tree, or in commit `rev` (an experiment's); None when absent."""
    if rev is None:
        path = root / rel
        return path.read_text() if path.is_file() else None
    try:  # a file in git or, as a DVC output, in the cache; as the experiment commit records it
        import dvc.api

        return dvc.api.read(rel, repo=str(root), rev=rev)
    except Exception:  # absent in that commit (or its cache)
        return None


@task(name="publish-report")
def publish_report(repo: str, results: list[dict], overrides: dict, report: str, train_info: str,
                   registration: str, experiment: Optional[dict] = None,
                   mlflow_run: Optional[dict] = None) -> str:
    """Markdown artifact `spotdiff-eval`: what this run produced — AP tables, MLflow run, registry
    decision, stage timings. A report or record made for an earlier model is marked stale, not shown."""
    root = Path(repo)
    rev = experiment["rev"] if experiment else None
    stale = set() if experiment else stale_stages(root)
    parts = ["# spotdiff pipeline", ""]
    if experiment:
        parts += [f"DVC experiment `{experiment['name']}` (commit `{rev}`), run in its own copy of the "
                  f"repository: params.yaml in the working tree is unchanged. Take it with "
                  f"`dvc exp apply {experiment['name']}`.", ""]
    if overrides:
        parts += ["Params overrides (this run only): " +
                  ", ".join(f"`{k}`: {old!r} → {new!r}" for k, (old, new) in overrides.items()), ""]
    text = _read(root, report, rev)
    parts += ["## Average precision", ""]
    if text is None:
        parts += [f"_No {report} (the evaluate stage did not run)._", ""]
    elif not _evaluated(results, experiment, stale):
        parts += [f"_Stale: {report} was made for an earlier model and this run did not evaluate the "
                  "current one; run the evaluate stage. No AP shown._", ""]
    else:
        tables = _tables(text)
        ap_tables = [t for t in tables if "ap" in t.lower()] or tables
        parts += ["\n\n".join(ap_tables) if ap_tables else text[:4000], ""]
    parts += ["## Tracking", ""]
    if mlflow_run:
        parts += [f"MLflow run `{mlflow_run['run_id']}` ({mlflow_run['uri']}), tagged "
                  f"`spotdiff.dvc_experiment={experiment['name'] if experiment else ''}`; the train stage's "
                  "run is its child.", ""]
    elif experiment is None:
        info_text = _read(root, train_info, None)
        if info_text is None:
            parts += [f"_No {train_info} (the train stage did not run)._", ""]
        elif "train" in stale:
            parts += [f"_Stale: {train_info} describes an earlier model._", ""]
        else:
            try:
                parts += [_mlflow_section(root, json.loads(info_text)), ""]
            except json.JSONDecodeError:
                parts += [f"_{train_info} is not valid JSON._", ""]
    reg_text = _read(root, registration, None) if experiment is None else None
    if reg_text is not None and "register" not in stale:
        try:
            reg = json.loads(reg_text)
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


def open_mlflow_run(root: Path, name: str, overrides: dict[str, Any]) -> Optional[dict]:
    """The flow's MLflow run for experiment `name` (in the project's store), tagged with it and its
    overrides; None when the store cannot be opened (the experiment still runs, with a warning)."""
    try:
        from mlflow.tracking import MlflowClient

        from spotdiff.params import load_params
        from spotdiff.tracking import redact_uri, setup_mlflow, tracking_uri

        params = load_params(root / "params.yaml")
        exp_id = setup_mlflow(params, root)
        uri = tracking_uri(params, root)
        client = MlflowClient(tracking_uri=uri)
        run = client.create_run(exp_id, run_name=f"flow {name}", tags={
            "spotdiff.dvc_experiment": name, "spotdiff.flow": "spotdiff-pipeline",
            "spotdiff.overrides": json.dumps(overrides, sort_keys=True, default=str)[:5000]})
        for key, value in overrides.items():
            client.log_param(run.info.run_id, f"override.{key}", value)
        return {"run_id": run.info.run_id, "uri": redact_uri(uri), "client": client}
    except Exception as exc:  # tracking must not stop the run
        get_run_logger().warning("MLflow: no run opened for %s (%s)", name, exc)
        return None


def close_mlflow_run(run: Optional[dict], experiment: Optional[dict], ok: bool) -> None:
    if not run:
        return
    client = run["client"]
    if experiment:
        client.set_tag(run["run_id"], "spotdiff.dvc_experiment_rev", experiment["rev"])
    client.set_terminated(run["run_id"], status="FINISHED" if ok else "FAILED")


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

    overrides: dotted params.yaml keys -> values, e.g. {"train.max_epochs": 2}: run as a DVC experiment
    in a temporary copy (params.yaml is never edited), linked to an MLflow run both ways.
    stages: which stages to run, in order (default: all); `force` reruns them even if up to date
    (without overrides).
    """
    root = resolve_repo(repo)
    wanted = list(stages) if stages else list(STAGES)
    if not wanted:
        raise PipelineError("stages: empty list; name at least one stage")
    logger = get_run_logger()
    with workspace_lock(root):
        # checked before anything runs (every section, as `spotdiff check-params` does)
        changed = apply_overrides(root / "params.yaml", overrides, write=False)
        if overrides:
            name = experiment_name()
            logger.info("overrides %s: run as DVC experiment %s (params.yaml untouched)", changed, name)
            mlflow_run = open_mlflow_run(root, name, dict(overrides))
            experiment = None
            try:
                experiment = run_experiment(str(root), name, dict(overrides),
                                            [] if stages is None else wanted,
                                            mlflow_run["run_id"] if mlflow_run else None)
            finally:
                close_mlflow_run(mlflow_run, experiment, experiment is not None)
            results = [{"stage": "experiment", "seconds": experiment["seconds"], "up_to_date": False}]
            artifact_id = publish_report(str(root), results, changed, report, train_info, registration,
                                         experiment={"name": experiment["name"], "rev": experiment["rev"],
                                                     "targets": [] if stages is None else wanted},
                                         mlflow_run={k: v for k, v in (mlflow_run or {}).items()
                                                     if k != "client"} or None)
            return {"repo": str(root), "stages": results, "overrides": changed, "artifact_id": artifact_id,
                    "experiment": experiment,
                    "mlflow_run_id": mlflow_run["run_id"] if mlflow_run else None}
        results = []
        for stage in wanted:
            runner = repro_stage
            if stage in RETRIES:
                runner = repro_stage.with_options(retries=RETRIES[stage],
                                                  retry_delay_seconds=retry_delay_seconds)
            results.append(runner(stage, str(root), force))
        artifact_id = publish_report(str(root), results, changed, report, train_info, registration)
    return {"repo": str(root), "stages": results, "overrides": changed, "artifact_id": artifact_id}


def experiment_name() -> str:
    """`ui-<UTC time>-<4 hex>`: a DVC experiment name (a valid git ref part), unique per flow run."""
    import datetime as _dt
    import secrets

    return f"ui-{_dt.datetime.now(_dt.timezone.utc).strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _main(argv: list[str]) -> int:
    import argparse

    ap = argparse.ArgumentParser(prog="flows/pipeline.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the flow now (ephemeral Prefect API unless PREFECT_API_URL is set)")
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="param override for this run only (a DVC experiment), e.g. train.max_epochs=2")
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
