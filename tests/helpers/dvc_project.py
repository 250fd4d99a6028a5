"""A real DVC project made of some of this repository's stages (their dvc.yaml entries and the code
they depend on), in a fresh git repository: for tests of what `dvc repro` / `dvc exp run` do."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

from helpers.env import REPO_ROOT, VENV_BIN, subprocess_env


def run(cmd: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """`cmd` in `cwd` with the venv first on PATH (as DVC stages find `spotdiff`), telemetry off."""
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True,
                         env=subprocess_env(venv_on_path=True, **env))
    if check:
        assert out.returncode == 0, f"{cmd}: rc {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def dvc(args: list[str], cwd: Path, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    return run([str(VENV_BIN / "dvc"), *args], cwd, check=check, **env)


def merged_params(params: dict) -> dict:
    """This repository's params.yaml with `params` merged over it, section by section (DVC wants
    every key a stage names to be in the file)."""
    base = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
    for section, values in params.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    return base


def make_project(root: Path, stages: list[str], params: dict) -> Path:
    """`root` as a git + DVC repository holding `stages` of dvc.yaml (plus `check_params`, which every
    stage depends on), this repository's `src/` and its `params.yaml` with `params` merged over it;
    everything committed."""
    root.mkdir(parents=True, exist_ok=True)
    all_stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    wanted = ["check_params"] + [s for s in stages if s != "check_params"]
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": {s: all_stages[s] for s in wanted}},
                                                  sort_keys=False))
    shutil.copytree(REPO_ROOT / "src", root / "src",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copy(REPO_ROOT / "params.ok", root / "params.ok")
    (root / "params.yaml").write_text(yaml.safe_dump(merged_params(params), sort_keys=False))
    (root / ".gitignore").write_text("/mlruns/\n__pycache__/\n")
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "t@example.com"], root)
    run(["git", "config", "user.name", "t"], root)
    dvc(["init", "-q"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-q", "-m", "fixture"], root)
    return root


def dvc_md5s(root: Path) -> dict[str, str]:
    """{out path: md5} of every stage output recorded in dvc.lock."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}
