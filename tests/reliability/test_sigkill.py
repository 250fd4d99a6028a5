"""A stage killed with SIGKILL at a random point (no clean-up of any kind) recovers on the next
`dvc repro` with the same bytes as an uninterrupted run (the DVC md5s of every output), and a second
`dvc repro` started while one runs is refused. The tiny profile the training tests use, on a real
DVC project made of this repository's stages."""

from __future__ import annotations

import copy
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers.dvc_project import dvc, dvc_md5s, make_project
from helpers.env import VENV_BIN, subprocess_env
from helpers.pipeline import TINY_EPOCHS

pytestmark = [pytest.mark.usefixtures("telemetry_off"), pytest.mark.slow]

STAGES = ["data", "inpaint", "pairs", "train", "testsets", "evaluate"]
KILLED = ["inpaint", "pairs", "train", "evaluate"]
SEED = int(os.environ.get("SPOTDIFF_KILL_SEED", "0"))  # the kill points; printed on failure


def _params() -> dict:
    params = copy.deepcopy(TINY_EPOCHS)
    params["train"].update(max_epochs=1, num_threads=1)
    params["testsets"] = {"pairs_per_set": 2, "image_size": 64}
    params["evaluate"] = {"samples_to_draw": 1}
    params["mlflow"] = {"experiment": "sigkill"}
    return params


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    """`dvc args` in its own process group (so the stage's command is killed with it)."""
    env = subprocess_env(venv_on_path=True, drop=("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"),
                         OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return subprocess.Popen([str(VENV_BIN / "dvc"), *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _wait_for_stage(proc: subprocess.Popen, stage: str, timeout: float = 300) -> None:
    """Read the output until DVC says it runs `stage`'s command."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        if line.startswith("> spotdiff "):
            return
        assert time.monotonic() < deadline, f"{stage}: did not start"
    raise AssertionError(f"dvc ended before running {stage} (rc {proc.wait()})")


def test_sigkill_of_each_stage_then_rerun_equals_an_uninterrupted_run(tmp_path: Path):
    rng = random.Random(SEED)
    repo = make_project(tmp_path / "proj", STAGES, _params())
    durations = {}
    for stage in ["check_params", *STAGES]:  # the uninterrupted run, timed stage by stage
        t0 = time.monotonic()
        dvc(["repro", "--single-item", stage], repo, OMP_NUM_THREADS="1")
        durations[stage] = time.monotonic() - t0
    reference = dvc_md5s(repo)
    assert {"models/cyws.pt", "data/pairs", "eval/metrics.json", "data/inpainted"} <= set(reference)

    for stage in KILLED:
        proc = _start(["repro", "--force", "--single-item", stage], repo)
        _wait_for_stage(proc, stage)
        delay = rng.uniform(0.1, 0.8) * max(durations[stage] - 3.0, 1.0)  # ~3 s: dvc's own start
        time.sleep(delay)
        if stage == "train":
            # a second `dvc repro` while one runs is refused (DVC's repository lock), not interleaved
            other = dvc(["repro"], repo, check=False)
            assert other.returncode != 0 and "lock" in (other.stdout + other.stderr).lower(), other
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        proc.stdout.close()
        rerun = dvc(["repro"], repo, check=False, OMP_NUM_THREADS="1")
        assert rerun.returncode == 0, (f"seed {SEED}: rerun after killing {stage} at {delay:.1f} s "
                                       f"failed:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-3000:]}")
        assert dvc_md5s(repo) == reference, f"seed {SEED}: {stage} killed at {delay:.1f} s"
        status = dvc(["status"], repo)
        assert "up to date" in status.stdout.lower(), status.stdout
