"""Scale-out of the inpaint and evaluate stages (issue F13, docs/SCALE-OUT.md): two processes of a real
`torch.distributed` launch (torchrun, gloo on CPU) write the same bytes as one process, and a launch
in which one shard fails mid-way resumes to the same bytes.

The launches run as subprocesses (a launch started in-process under pytest would re-run pytest); one
thread per process. The data are tiny and made here by the project's own generators.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.env import REPO_ROOT, subprocess_env
from spotdiff.cli import main

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]

INPAINT_PARAMS = {"data": {"num_images": 14, "image_width": 96, "image_height": 72, "min_objects": 2,
                           "max_objects": 3},
                  "inpaint": {"max_versions": 2, "batch_size": 2}}
EVAL_PARAMS = {"evaluate": {"batch_size": 2, "samples_to_draw": 2}}


def _env() -> dict[str, str]:
    src = str(REPO_ROOT / "src")
    path = os.environ.get("PYTHONPATH")
    return subprocess_env(OMP_NUM_THREADS="1", PYTHONPATH=f"{src}{os.pathsep}{path}" if path else src)


def _spotdiff(args: list[str], cwd: Path, launch: bool = False) -> subprocess.CompletedProcess:
    """`spotdiff ARGS` in a subprocess; `launch`: as the two processes of a torchrun launch."""
    head = TORCHRUN if launch else [sys.executable]
    return subprocess.run([*head, "-m", "spotdiff.cli", *args], cwd=cwd, env=_env(), capture_output=True,
                          text=True, timeout=300)


def _digests(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """md5 of every file under `folder` (what DVC hashes), by relative path."""
    return {p.relative_to(folder).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name not in skip}


@pytest.fixture
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_params(path: Path, raw: dict, devices: int | str = 1) -> Path:
    raw = json.loads(json.dumps(raw))
    section = "inpaint" if "inpaint" in raw else "evaluate"
    raw[section]["devices"] = devices
    path.write_text(yaml.safe_dump(raw))
    return path


def _break(path: Path):
    """Make `path` unreadable for a while, like a disk or network fault: zeros of the same size and
    times (what the inputs' fingerprints look at), so that the fault is all that changes. Returns
    the function that puts it back."""
    data, stat = path.read_bytes(), path.stat()

    def write(content: bytes) -> None:
        path.write_bytes(content)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    write(bytes(len(data)))
    return lambda: write(data)


# ---------------------------------------------------------------- inpaint


@pytest.fixture(scope="module")
def inpaint_case(tmp_path_factory):
    """(root, source, digests of the one-process output): the data stage's tiny source, inpainted by
    one process in this process (one thread)."""
    import torch

    root = tmp_path_factory.mktemp("shard-inpaint")
    params = _write_params(root / "params.yaml", INPAINT_PARAMS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["data", "--params", str(params), "--out", str(root / "source")]) == 0
        assert main(["inpaint", "--params", str(params), "--source", str(root / "source"),
                     "--out", str(root / "one")]) == 0
    finally:
        torch.set_num_threads(before)
    digests = _digests(root / "one")
    assert any(k.startswith("inpainted/") for k in digests) and "list_of_indices.npy" in digests
    return root, root / "source", digests


@pytest.mark.slow
def test_inpaint_two_processes_write_the_bytes_of_one(inpaint_case):
    root, source, one = inpaint_case
    out = root / "torchrun"
    done = _spotdiff(["inpaint", "--params", str(root / "params.yaml"), "--source", str(source),
                      "--out", str(out)], root, launch=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "inpaint [rank 1/2]" in done.stderr and "inpaint [rank 0/2]" in done.stderr  # both worked
    assert _digests(out) == one
    # rank 0 alone reports, with the whole launch's counts (14 images, each done by one process)
    assert done.stdout.count("inpaint (opencv):") == 1
    assert "(this run: 14 images / " in done.stdout and len(np.load(out / "list_of_indices.npy")) == 14


@pytest.mark.slow
def test_inpaint_a_failed_shard_resumes_to_the_same_bytes(inpaint_case):
    """Under torchrun an image of rank 1's second chunk is unreadable, so rank 1 stops mid-way and
    the launch fails with one line per process; the rerun, launched by `inpaint.devices: 2` (exit 2
    when it fails), keeps every file already written and ends with the one-process bytes."""
    root, source, one = inpaint_case
    params = _write_params(root / "params2.yaml", INPAINT_PARAMS, devices=2)
    images = json.loads((source / "instances.json").read_text())["images"]
    with_objects = sorted(im["id"] for im in images)  # every generated image has objects
    chunk3 = with_objects[6:8]  # chunks of 2: chunk 3 is rank 1's second
    names = {im["id"]: im["file_name"] for im in images}
    restore = _break(source / "images" / names[chunk3[0]])
    out = root / "by-params"
    args = ["inpaint", "--params", str(params), "--source", str(source), "--out", str(out)]
    try:
        failed = _spotdiff(args, root, launch=True)
    finally:
        restore()
    assert failed.returncode != 0, failed.stderr[-3000:]
    errors = [line for line in failed.stderr.splitlines() if line.startswith("spotdiff: error: ")]
    assert any(f"{names[chunk3[0]]}: not an image file" in line for line in errors), failed.stderr[-3000:]  # rank 1's
    assert any("process 0: lost the other processes" in line for line in errors), failed.stderr[-3000:]  # rank 0's
    assert "]: Traceback" not in failed.stderr  # no process's traceback (torchrun's own report aside)
    assert not (out / "list_of_indices.npy").exists()
    kept = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.suffix in (".png", ".npy")}
    assert (out / "metadata" / f"{with_objects[2]}.npy") in kept  # rank 1's first chunk was done

    rerun = _spotdiff(args, root)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _digests(out) == one
    assert all(p.stat().st_mtime_ns == t for p, t in kept.items())  # resumed: nothing done twice
    done_before = sum(1 for p in kept if p.parent.name == "metadata")
    assert f"; {done_before} already done)" in rerun.stdout


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def evaluate_case(tmp_path_factory):
    """(root, test sets, model, digests of the one-process output): the stand-ins (3 pairs per set,
    64 px: batches of 2 and 1) and the untrained tiny CYWS, both methods evaluated by one process here (one thread)."""
    import torch

    from helpers.models import save_tiny_cyws
    from spotdiff.data.standins import write_standins

    root = tmp_path_factory.mktemp("shard-evaluate")
    sets = root / "sets"
    write_standins(sets, pairs=3, size=64, seed=7)
    model = save_tiny_cyws(root / "cyws.pt")
    params = _write_params(root / "params.yaml", EVAL_PARAMS)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["evaluate", "--params", str(params), "--model", str(model), "--no-mlflow",
                     "--testsets", str(sets), "--out", str(root / "one")]) == 0
    finally:
        torch.set_num_threads(before)
    digests = _digests(root / "one", skip=("timings.json",))
    assert {"metrics.json", "report.md", "pr_curves.png"} <= set(digests)
    assert sum(k.startswith("samples/") for k in digests) == 4
    return root, sets, model, digests


def _evaluate_args(params: Path, model: Path, sets: Path, out: Path, run_info: Path | None = None) -> list[str]:
    log = ["--run-info", str(run_info)] if run_info else ["--no-mlflow"]
    return ["evaluate", "--params", str(params), "--model", str(model), *log, "--testsets", str(sets),
            "--out", str(out)]


@pytest.mark.slow
def test_evaluate_two_processes_write_the_bytes_of_one(evaluate_case, mlflow_store, tmp_path):
    """Both processes detect, rank 0 alone scores, writes and logs to MLflow (once)."""
    from mlflow.tracking import MlflowClient

    from helpers.mlflow_store import start_training_run, write_run_record
    from spotdiff.metricsfile import flatten_metrics
    from spotdiff.params import load_params

    root, sets, model, one = evaluate_case
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({**EVAL_PARAMS, "mlflow": {"experiment": "shard-test",
                                                                "artifact_location": str(tmp_path / "art")}}))
    run_id = start_training_run(load_params(params), metric=("best/val_loss", 1.0))
    out = tmp_path / "torchrun"
    done = _spotdiff(_evaluate_args(params, model, sets, out, write_run_record(tmp_path / "run.json", run_id)),
                     tmp_path, launch=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "[rank 1/2]" in done.stderr and "[rank 0/2]" in done.stderr
    assert _digests(out, skip=("timings.json",)) == one
    timings = json.loads((out / "timings.json").read_text())
    assert timings["processes"] == 2 and timings["sets"]["virat_std"]["pairs"] == 3
    assert not (out / ".evaluate-parts").exists()
    assert done.stdout.count("evaluate: 2 method(s)") == 1  # rank 0 alone reports
    client = MlflowClient()
    flat = flatten_metrics(json.loads((out / "metrics.json").read_text()))
    logged = client.get_run(run_id).data.metrics
    assert all(logged[k] == pytest.approx(v) for k, v in flat.items() if v is not None)
    assert len(client.get_metric_history(run_id, "cyws/coco_inpainted/all/ap50")) == 1  # logged once


def test_evaluate_devices_auto_counts_cores_gpus_and_work(monkeypatch):
    """One process per physical core (or GPU), at most one per PAIRS_PER_PROCESS test pairs."""
    import torch

    from spotdiff import distributed

    per = distributed.PAIRS_PER_PROCESS
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert [distributed.auto_devices(n, 2) for n in (0, per - 1, 2 * per - 1, 2 * per, 5 * per)] == [1, 1, 1, 2, 2]
    assert distributed.auto_devices(5 * per, 1) == 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert distributed.auto_devices(5 * per, 2) == 5  # GPUs, not cores, bound it


@pytest.mark.slow
@pytest.mark.parametrize("pairs_per_process", [1000, 4])
def test_evaluate_devices_auto_writes_the_bytes_of_one_process(evaluate_case, tmp_path, monkeypatch, one_thread,
                                                                pairs_per_process):
    """`evaluate.devices: auto` (the default): the 21 pairs stay in one process, or, at 4 pairs per
    process, go to one process per core through torchrun; the same files either way."""
    from spotdiff import distributed
    from spotdiff.training.threads import physical_cores

    root, sets, model, one = evaluate_case
    monkeypatch.setattr(distributed, "PAIRS_PER_PROCESS", pairs_per_process)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    params = _write_params(tmp_path / "params.yaml", EVAL_PARAMS, devices="auto")
    out = tmp_path / "auto"
    assert main(_evaluate_args(params, model, sets, out)) == 0
    assert _digests(out, skip=("timings.json",)) == one
    expected = 1 if pairs_per_process == 1000 else min(physical_cores(), 21 // 4)
    assert json.loads((out / "timings.json").read_text())["processes"] == expected


def _pid_of_rank(marker: str, rank: int) -> int | None:
    """The process of `rank` among those whose env holds SPOTDIFF_TEST_LAUNCH=marker (our launch)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.split("=", 1) for item in
                       (entry / "environ").read_bytes().decode(errors="replace").split("\0") if "=" in item)
        except OSError:
            continue
        if env.get("SPOTDIFF_TEST_LAUNCH") == marker and env.get("RANK") == str(rank):
            return int(entry.name)
    return None


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/environ").is_file(), reason="finds the rank's process in /proc")
def test_evaluate_a_killed_shard_resumes_to_the_same_bytes(evaluate_case, tmp_path):
    """Rank 1 of a launch by `evaluate.devices: 2` is killed (SIGKILL) once it has saved a batch of the
    4th set: the launch fails (exit 2, one line); the rerun, under torchrun, reuses the saved batches
    and writes the one-process bytes."""
    import signal
    import time
    import uuid

    root, sets, model, one = evaluate_case
    params = _write_params(tmp_path / "params2.yaml", EVAL_PARAMS, devices=2)
    out = tmp_path / "eval"
    args = _evaluate_args(params, model, sets, out)
    marker = uuid.uuid4().hex
    target = out / ".evaluate-parts" / "synthtext_change" / "0000001.npz"  # batch 1: rank 1's
    with open(tmp_path / "stdout", "w") as so, open(tmp_path / "stderr", "w") as se:
        launch = subprocess.Popen([sys.executable, "-m", "spotdiff.cli", *args], cwd=tmp_path, stdout=so,
                                  stderr=se, env={**_env(), "SPOTDIFF_TEST_LAUNCH": marker})
        killed = None
        deadline = time.monotonic() + 240
        while launch.poll() is None and time.monotonic() < deadline:
            if killed is None and target.exists():
                killed = _pid_of_rank(marker, 1)
                assert killed is not None
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.005)
        if launch.poll() is None:
            launch.kill()
        code = launch.wait()
    stderr = (tmp_path / "stderr").read_text()
    assert killed is not None and code == 2, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("spotdiff: error: ")]
    assert errors and errors[-1].startswith("spotdiff: error: evaluate: process(es) "), stderr[-3000:]
    assert "1 of 2" in errors[-1] and "Traceback" not in stderr, stderr[-3000:]
    assert not (out / "metrics.json").exists()

    rerun = _spotdiff(args, tmp_path, launch=True)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert _digests(out, skip=("timings.json",)) == one
    timings = json.loads((out / "timings.json").read_text())["sets"]
    for subset in ("small", "medium", "large"):  # finished before the kill: every pair from its part
        assert timings[f"coco_inpainted_{subset}"]["resumed_pairs"] == 3
    assert timings["synthtext_change"]["resumed_pairs"] >= 1
    assert not (out / ".evaluate-parts").exists()


def test_evaluate_parts_of_other_weights_are_not_reused(evaluate_case, tmp_path, one_thread):
    """A part folder left by a run with other weights is discarded, not mixed in (one process)."""
    from helpers.models import save_tiny_cyws

    root, sets, model, one = evaluate_case
    other = save_tiny_cyws(tmp_path / "other.pt", seed=1)
    out = tmp_path / "eval"
    restore = _break(sets / "coco_inpainted" / "medium" / "images_and_masks" / "1.png")
    try:
        assert main(_evaluate_args(root / "params.yaml", other, sets, out)) == 2
    finally:
        restore()
    assert any((out / ".evaluate-parts").rglob("*.npz"))
    assert main(_evaluate_args(root / "params.yaml", model, sets, out)) == 0
    assert _digests(out, skip=("timings.json",)) == one
    timings = json.loads((out / "timings.json").read_text())["sets"]
    assert all(entry["resumed_pairs"] == 0 for entry in timings.values())


# ---------------------------------------------------------------- the pieces


def test_shards_split_the_units_once_and_in_the_same_way_every_time(monkeypatch):
    from spotdiff.distributed import Shard, shard_from_env

    for world in (1, 2, 3, 8):
        owners = [[r for r in range(world) if Shard(r, world).owns(u)] for u in range(50)]
        assert all(len(o) == 1 for o in owners)  # every unit is done once
        assert [o[0] for o in owners] == [u % world for u in range(50)]
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert shard_from_env() == Shard(3, 4, 1) and shard_from_env().tag() == " [rank 3/4]"
    monkeypatch.setenv("RANK", "4")
    from spotdiff.errors import SpotdiffError

    with pytest.raises(SpotdiffError, match="RANK=4, WORLD_SIZE=4"):
        shard_from_env()


def test_batch_part_files_give_back_the_same_floats(tmp_path):
    from spotdiff.evaluation.runner import BatchRecord

    rng = np.random.default_rng(0)
    boxes = [rng.random((k, 4)) * 100 for k in (3, 0, 5, 1)]
    scores = [rng.random(len(b)) for b in boxes]
    rec = BatchRecord([rng.random((2, 4)), np.zeros((0, 4)), rng.random((1, 4)), rng.random((4, 4))],
                      {"cyws": boxes, "ssim": boxes[::-1]}, {"cyws": scores, "ssim": scores[::-1]},
                      {"cyws": 0.5, "ssim": 0.25}, 0.125)
    rec.save(tmp_path / "0000001.npz")
    back = BatchRecord.load(tmp_path / "0000001.npz", ["cyws", "ssim"])
    assert back is not None
    for got, want in [(back.gt, rec.gt)] + [(back.dets[m], rec.dets[m]) for m in rec.dets] + \
            [(back.scores[m], rec.scores[m]) for m in rec.dets]:
        assert len(got) == len(want)
        assert all(g.dtype == np.float64 and g.shape == w.shape and g.tobytes() == w.tobytes()
                   for g, w in zip(got, want))
    assert back.seconds == rec.seconds and back.read_seconds == rec.read_seconds
    assert BatchRecord.load(tmp_path / "0000001.npz", ["ssim"]) is None  # other methods: run again
    (tmp_path / "0000002.npz").write_bytes(b"\0" * 64)
    assert BatchRecord.load(tmp_path / "0000002.npz", ["cyws", "ssim"]) is None


def test_several_nodes_need_the_rendezvous_env(inpaint_case, tmp_path, monkeypatch, capsys):
    root, source, _ = inpaint_case
    raw = json.loads(json.dumps(INPAINT_PARAMS))
    raw["inpaint"]["num_nodes"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    for var in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    code = main(["inpaint", "--params", str(tmp_path / "params.yaml"), "--source", str(source),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "inpaint.num_nodes is 2" in err and "MASTER_ADDR, MASTER_PORT, NODE_RANK" in err
    assert not (tmp_path / "out").exists()  # nothing started


def test_more_processes_than_this_machine_has_is_one_line(inpaint_case, tmp_path, monkeypatch, capsys):
    """`inpaint.devices: 64` on a 2-core machine without a GPU would start 64 torch processes that
    wait on each other; it is refused before torchrun starts anything."""
    import torch

    root, source, _ = inpaint_case
    have = torch.cuda.device_count() if torch.cuda.is_available() else len(os.sched_getaffinity(0))
    raw = json.loads(json.dumps(INPAINT_PARAMS))
    raw["inpaint"]["devices"] = have + 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    code = main(["inpaint", "--params", str(tmp_path / "params.yaml"), "--source", str(source),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"inpaint.devices is {have + 1}" in err and f"at most {have}" in err
    assert not (tmp_path / "out").exists()


def test_the_number_of_processes_is_not_in_the_inpaint_run_file(inpaint_case):
    """`.inpaint-run.json` (a DVC output) is the same for any number of processes, and the same as
    before the scale-out params existed: params without batch_size, device, devices, num_nodes."""
    root, _, _ = inpaint_case
    run = json.loads((root / "one" / ".inpaint-run.json").read_text())
    assert list(run["params"]) == ["backend", "seed", "max_versions", "dilate_px", "opencv_method",
                                   "opencv_radius", "lama_checkpoint"]


def test_a_failed_launch_starts_its_error_on_a_line_of_its_own(inpaint_case, tmp_path, monkeypatch, capsys):
    """A process killed mid-way leaves its progress bar without a newline on the shared stderr; the
    launch's one-line error must not be glued to it (CI saw `...pair/s]spotdiff: error: ...`)."""
    import torch.distributed.run as torchrun
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    def dies_mid_bar(_args):
        sys.stderr.write("inpaint [rank 1/2]:  50%|#####     | 1/2 [00:01<00:01]")  # no newline
        raise ChildFailedError("spotdiff.cli", {1: ProcessFailure(1, 4242, -9, "<N/A>")})

    monkeypatch.setattr(torchrun, "run", dies_mid_bar)
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: {0, 1}, raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    root, source, _ = inpaint_case
    raw = json.loads(json.dumps(INPAINT_PARAMS))
    raw["inpaint"]["devices"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    code = main(["inpaint", "--params", str(tmp_path / "params.yaml"), "--source", str(source),
                 "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("spotdiff: error: ")]
    assert code == 2 and len(errors) == 1, err
    assert errors[0].startswith("spotdiff: error: inpaint: process(es) 1 of 2 failed"), err
    assert "Traceback" not in err
