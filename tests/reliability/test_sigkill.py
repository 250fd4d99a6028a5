"""A stage's process killed with SIGKILL at a random point (no clean-up of any kind) recovers on the
next `dvc repro` with the same bytes as an uninterrupted run (the DVC md5s of every output), and a
second `dvc repro` started while one runs is refused. The tiny profile the training tests use, on a real
DVC project made of this repository's stages."""

from __future__ import annotations

import copy
import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from helpers.dvc_project import dvc, dvc_md5s, make_project, run
from helpers.env import SPOTDIFF, VENV_BIN, subprocess_env
from helpers.pipeline import TINY_EPOCHS

pytestmark = pytest.mark.usefixtures("telemetry_off")

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
    return subprocess.Popen([str(VENV_BIN / "dvc"), *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _stage_processes(proc: subprocess.Popen, stage: str, timeout: float = 300) -> list[psutil.Process]:
    """Wait until `dvc` runs `spotdiff <stage>` (polling its process tree); those processes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            found = [c for c in psutil.Process(proc.pid).children(recursive=True)
                     if f"spotdiff {stage}" in " ".join(c.cmdline())]
        except psutil.NoSuchProcess:
            found = []
        if found:
            return found
        assert proc.poll() is None, f"dvc ended before running {stage} (rc {proc.returncode})"
        time.sleep(0.02)
    raise AssertionError(f"{stage}: did not start in {timeout} s")


@pytest.fixture
def request_cleanup():
    """Register a started `dvc` process; whatever the test's outcome, none is left running."""
    started: list[subprocess.Popen] = []
    yield started.append
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)


@pytest.mark.slow
def test_sigkill_of_each_stage_then_rerun_equals_an_uninterrupted_run(tmp_path: Path, request_cleanup):
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
        # a random point of the command's run (~3 s of each timed call is dvc's own start and end);
        # on a quicker machine the command can end before it: then again, at half the delay
        delay = rng.uniform(0.1, 0.8) * max(durations[stage] - 3.0, 1.0)
        for _attempt in range(8):
            if stage == "inpaint":  # a persistent output resumes per image: start it from nothing again
                shutil.rmtree(repo / "data/inpainted", ignore_errors=True)
            proc = _start(["repro", "--force", "--single-item", stage], repo)
            request_cleanup(proc)
            victims = _stage_processes(proc, stage)
            time.sleep(delay)
            if stage == "train":
                # a second `dvc repro` while one runs is refused (DVC's repository lock), not interleaved
                other = dvc(["repro"], repo, check=False)
                assert other.returncode != 0 and "lock" in (other.stdout + other.stderr).lower(), other
            if all(v.is_running() for v in victims):
                break
            proc.wait(timeout=120)
            delay /= 2
        else:
            raise AssertionError(f"{stage}: it always ended before the kill (last delay {delay:.2f} s)")
        # SIGKILL the stage's own process (what the OOM killer or `kill -9` does): no clean-up runs
        for victim in victims:
            victim.send_signal(signal.SIGKILL)
        proc.wait(timeout=120)  # DVC sees the command die and fails the stage
        assert proc.returncode != 0
        rerun = dvc(["repro"], repo, check=False, OMP_NUM_THREADS="1")
        assert rerun.returncode == 0, (f"seed {SEED}: rerun after killing {stage} at {delay:.1f} s "
                                       f"failed:\n{rerun.stdout[-3000:]}\n{rerun.stderr[-3000:]}")
        assert dvc_md5s(repo) == reference, f"seed {SEED}: {stage} killed at {delay:.1f} s"
        status = dvc(["status"], repo)
        assert "up to date" in status.stdout.lower(), status.stdout

    # The whole `dvc repro` (DVC itself too) killed during train: DVC may leave its lock file
    # truncated; `spotdiff dvc-unlock` (which `make run` and the flow run first) repairs it.
    proc = _start(["repro", "--force", "--single-item", "train"], repo)
    try:
        _stage_processes(proc, "train")
        time.sleep(rng.uniform(0.1, 0.8) * max(durations["train"] - 3.0, 1.0))
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    unlock = run([str(SPOTDIFF), "dvc-unlock", "--repo", str(repo)], repo)
    assert unlock.stdout.startswith("dvc-unlock: ")
    dvc(["repro"], repo, OMP_NUM_THREADS="1")
    assert dvc_md5s(repo) == reference, f"seed {SEED}: dvc repro killed during train"


def test_dvc_unlock_repairs_only_a_corrupted_lock_and_only_when_dvc_is_not_running(tmp_path: Path):
    import fcntl

    from spotdiff.dvclocks import repair_rwlock
    from spotdiff.errors import SpotdiffError

    tmp = tmp_path / ".dvc/tmp"
    tmp.mkdir(parents=True)
    assert repair_rwlock(tmp_path) is None  # no lock file
    (tmp / "rwlock").write_text('{"read": {}, "write": {}}')
    assert repair_rwlock(tmp_path) is None  # a valid one is left alone
    (tmp / "rwlock").write_text("")  # what a dvc killed mid-write leaves
    with open(tmp / "lock", "a") as held:  # a running dvc holds the repository
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SpotdiffError, match="a dvc process holds this repository"):
            repair_rwlock(tmp_path)
    assert (tmp / "rwlock").read_text() == ""
    done = repair_rwlock(tmp_path)
    assert done and "reset" in done and (tmp / "rwlock").read_text() == "{}"
    assert len(list(tmp.glob("rwlock.corrupt-*"))) == 1
