"""The `evaluate` stage (`spotdiff evaluate`): both methods on every test set, scored by the paper's
protocol, with a report.

Reads: `params.evaluate`, `params.ssim`, `params.mlflow`; the model (`models/cyws.pt` or any
checkpoint / registry reference), the test sets, and `models/train_run.json` (which MLflow run the
metrics go to).
Writes: the files listed below under `<out>`.

`run(params, model, run_info, testsets, out, ...)` is its entry point. For each method in
`evaluate.methods` and each test set found under the test-set folder
(`spotdiff.data.testsets.find_testsets`: COCO-Inpainted small / medium / large, Synthtext-Change,
VIRAT-STD, Kubric-Change), every pair is read once and given to every method
(`runner`); scores (`scoring`): VOC AP at `evaluate.iou_threshold`, both images of every pair
pooled, no NMS and no score threshold (the paper's protocol), and COCO AP@[.5:.95] as a second
column; COCO-Inpainted per size subset and pooled ("all", the paper's headline number).

Outputs under `out` (each file written atomically; `plots/` and `samples/` swapped in whole). All but
`timings.json` are the same bytes for the same model, data and params (DVC hashes them):
- `metrics.json`  {method: {testset: {subset: {"ap50", "coco_ap", "coco_ap50", "max_recall", "num_gt",
  "pairs"}}}} (subset "all" for the sets without subsets; null where a set has no ground truth).
  `spotdiff.metricsfile.flatten_metrics` joins keys with "/": `cyws/coco_inpainted/all/ap50` is the
  default `register.primary_metric`.
- `plots/pr_<method>_<testset>.csv`  the interpolated precision at 101 recall levels (pooled "all").
- `pr_curves.png`  one panel per test set, every method.
- `report.md`  method × test set (× size) table next to the paper's reference AP; says STAND-IN
  whenever a set is one of our offline stand-ins.
- `samples/<testset>.png`  a few pairs: ground truth and each method's displayed boxes.
- `timings.json`  reading and detection times per set, the total and the device (not a DVC output).

The metrics (flattened, "/"-separated names) and the times (`eval_time/...`), the report, the
pictures, the CSVs and timings.json are logged to the training run named by `mlflow_run_id` in the
training summary (rank 0 only); a summary without one is skipped with a warning.

Scale-out and resuming (docs/SCALE-OUT.md): the pairs of each set are cut into batches of
`evaluate.batch_size` in order; every finished batch's boxes are saved under `out/.evaluate-parts/`
(with a fingerprint of the weights, the settings and the sets: a mismatch discards them), so a killed
run redoes only the missing batches. Inside a `torch.distributed` launch (`evaluate.devices` > 1, or
torchrun) batch b is run by rank b % WORLD_SIZE, rank 0 gathers them in order and scores once: the
same files as one process. The part folder is deleted when the outputs are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable

import typer

if TYPE_CHECKING:
    from spotdiff.distributed import Shard
    from spotdiff.params import Params

# Part files of the batches done so far (one .npz per batch, per test set), so a killed run resumes;
# deleted once the outputs are written.
PARTS_DIR = ".evaluate-parts"
PARTS_FORMAT = "spotdiff-evaluate-parts/1"


def check_outputs(out: Path) -> None:
    from spotdiff.errors import SpotdiffError

    if out.exists() and not out.is_dir():
        raise SpotdiffError(f"{out}: is a file; --out must be a folder")


def run(params: Params, model: str | Path, run_info: str | Path | None, testsets: str | Path,
        out: str | Path, echo: Callable[[str], None] = print,
        warn: Callable[[str], None] | None = None) -> dict:
    """Run the stage; return the metrics dict. `model`: checkpoint path or MLflow reference (for the
    methods that need one); `run_info=None` = no MLflow logging; `echo` / `warn` print progress /
    warning lines (default: stdout / stderr). Inside a `torch.distributed` launch every process runs
    its share of the batches and rank 0 does the rest (other ranks return {})."""
    from spotdiff.distributed import joined

    with joined() as shard:
        return _run(params, model, Path(run_info) if run_info else None, Path(testsets), Path(out), echo,
                    warn, shard)


def check_inputs(params: Params, model: str | Path, testsets: str | Path, out: str | Path) -> int:
    """What `run` would refuse at its start (no test sets, no model, --out a file), checked once
    before a launch starts its processes; returns the number of test pairs (all sets)."""
    from spotdiff.data.testsets import open_testset
    from spotdiff.evaluation.runner import check_model, discover
    from spotdiff.methods import method_class

    check_outputs(Path(out))
    pairs = sum(len(open_testset(path, name)) for _, _, name, path in discover(Path(testsets)))
    for name in params.evaluate.methods:
        check_model(name, str(model) if method_class(name, "evaluate.methods").uses_model else None)
    return pairs


def _fingerprint(params: Params, detectors: dict, rows: list, readers: list) -> dict:
    """What the part files depend on: the models' weights, the settings that change boxes, the sets."""
    import hashlib

    import torch

    cfg = params.evaluate.model_dump(exclude={"samples_to_draw", "draw_top_k", "num_workers", "devices",
                                              "num_nodes"})
    weights = {}
    for name, det in detectors.items():
        model = getattr(det, "model", None)
        if model is not None:
            digest = hashlib.sha256()
            for key, tensor in model.state_dict().items():  # (as float64: numpy has no bfloat16)
                digest.update(f"{key} {tensor.dtype} {tuple(tensor.shape)}".encode())
                digest.update(tensor.detach().cpu().to(torch.float64).numpy().tobytes())
            weights[name] = digest.hexdigest()
    sets = {}
    for (_, _, name, path), reader in zip(rows, readers):
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        sets[name] = {"pairs": len(reader), "files": [[p.relative_to(path).as_posix(), p.stat().st_size,
                                                        p.stat().st_mtime_ns] for p in files]}
    return {"format": PARTS_FORMAT, "evaluate": cfg, "ssim": params.ssim.model_dump(mode="json"),
            "settings": {n: d.settings() for n, d in detectors.items()}, "weights": weights, "sets": sets}


def _prepare_parts(parts: Path, fingerprint: dict) -> None:
    """Keep the part files of a killed run only when made from the same weights, settings and sets."""
    import json
    import shutil

    from spotdiff.fsutil import write_json_atomic

    run_file = parts / "run.json"
    try:
        previous = json.loads(run_file.read_text()) if run_file.is_file() else None
    except ValueError:
        previous = None
    if previous != json.loads(json.dumps(fingerprint)):
        shutil.rmtree(parts, ignore_errors=True)
    parts.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_file, fingerprint)


def _run(params: Params, model: Path | str, train_info: Path | None, testsets_dir: Path, out: Path,
         echo: Callable[[str], None], warn: Callable[[str], None] | None, shard: Shard) -> dict:
    import math
    import shutil
    import sys
    import time

    import torch

    from spotdiff import tracking
    from spotdiff.data.testsets import open_testset
    from spotdiff.evaluation.mlflow_log import check_run, log_to_mlflow, mlflow_run_id
    from spotdiff.evaluation.plots import plot_curves, write_curve_csvs
    from spotdiff.evaluation.report import TIMINGS_FILE, _fmt, time_metrics, timings, write_report
    from spotdiff.evaluation.runner import build_detectors, discover, run_set
    from spotdiff.evaluation.samples import write_samples
    from spotdiff.evaluation.scoring import compute_metrics
    from spotdiff.fsutil import atomic_dir, removed_if_failed, write_json_atomic, write_text_atomic
    from spotdiff.metricsfile import flatten_metrics  # the register stage reads metrics.json the same way

    cfg = params.evaluate
    check_outputs(out)
    # Everything that can be wrong with the inputs is found before the long part.
    rows = discover(testsets_dir)
    readers = [open_testset(path, name) for _, _, name, path in rows]
    if warn is None:
        def warn(line: str) -> None:
            print(line, file=sys.stderr)
    run_id = mlflow_run_id(train_info, warn, model) if shard.is_main and tracking.is_rank_zero() else None
    if run_id:
        run_id = check_run(params, run_id, train_info, warn, model)  # type: ignore[arg-type]
    parts = out / PARTS_DIR
    if not shard.is_main:
        shard.barrier()  # rank 0 builds first: a model export to the engine's cache happens once
    detectors = build_detectors(params, model)
    if shard.is_main:
        _prepare_parts(parts, _fingerprint(params, detectors, rows, readers))
        shard.barrier()
    methods = list(detectors)
    titles = {m: d.title for m, d in detectors.items()}

    start = time.perf_counter()
    results = []
    per_testset_samples: dict[str, int] = {}
    for row in rows:  # COCO-Inpainted's samples are spread over its subsets
        per_testset_samples[row[0]] = per_testset_samples.get(row[0], 0) + 1
    for row, reader in zip(rows, readers):
        n = math.ceil(cfg.samples_to_draw / per_testset_samples[row[0]])
        results.append(run_set(reader, row, detectors, params, n, shard, parts / row[2]))
    if not shard.is_main:
        return {}
    metrics, curves = compute_metrics(results, methods, cfg.iou_threshold, cfg.max_boxes)
    total = time.perf_counter() - start
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = write_report(results, metrics, detectors, params)
    standin = {r.testset: r.is_standin for r in results}

    with removed_if_failed(out):  # a write failure leaves no empty --out behind
        out.mkdir(parents=True, exist_ok=True)
        with atomic_dir(out / "plots") as tmp:
            write_curve_csvs(tmp, curves)
        with atomic_dir(out / "samples") as tmp:
            write_samples(tmp, results, methods, cfg.samples_to_draw, titles)
        plot_curves(out / "pr_curves.png", curves, metrics, standin, titles)
        write_text_atomic(out / "report.md", report)
        write_json_atomic(out / "metrics.json", metrics)
        write_json_atomic(out / TIMINGS_FILE, timings(results, methods, total, device, shard.world_size))
    shutil.rmtree(parts, ignore_errors=True)  # the outputs are complete: nothing left to resume

    for r in results:
        secs = ", ".join(f"{m} {r.seconds[m]:.1f} s" for m in methods)
        tag = " (stand-in)" if r.is_standin else ""
        echo(f"  {r.name}{tag}: {r.pairs} pairs, read {r.read_seconds:.1f} s, {secs}")
    for m in methods:
        for testset, entry in metrics[m].items():
            ap = entry["all"]["ap50"]
            echo(f"  {m} {testset}: AP@{cfg.iou_threshold:g} {_fmt(ap)}")

    if run_id:
        flat = {**flatten_metrics(metrics), **time_metrics(results, methods, total)}
        files = [out / "report.md", out / "pr_curves.png", out / "metrics.json", out / TIMINGS_FILE]
        files += sorted((out / "plots").glob("*.csv")) + sorted((out / "samples").glob("*.png"))
        log_to_mlflow(run_id, flat, out, files)
        echo(f"  logged {len(flat)} metrics and {len(files)} files to MLflow run {run_id}")
    echo(f"evaluate: {len(methods)} method(s) × {len(results)} set(s) -> {out} ({total:.1f} s)")
    return metrics


def evaluate(
    params: Path = typer.Option(Path("params.yaml"), help="params file; this stage reads `evaluate`, "
                                "`ssim` and `mlflow`"),
    model: str = typer.Option("models/cyws.pt", help="CYWS model (for method cyws): a checkpoint path "
                              "(ours or the authors' published .ckpt) or models:/NAME@ALIAS, "
                              "models:/NAME/VERSION, runs:/RUN_ID/PATH"),
    run_info: Path = typer.Option(Path("models/train_run.json"), "--run-info", "--train-info",
                                  help="the train stage's run record; its mlflow_run_id is the run the "
                                  "metrics go to"),
    testsets: Path = typer.Option(Path("data/testsets"), help="folder holding the test sets"),
    out: Path = typer.Option(Path("eval"), help="output folder: metrics.json, report.md, plots/, samples/, "
                             "timings.json"),
    mlflow: bool = typer.Option(True, "--mlflow/--no-mlflow", help="log metrics and files to the training "
                                "run in MLflow"),
) -> None:
    """Score CYWS and SSIM on the test sets (VOC AP@0.5, COCO AP); write metrics, curves, report, samples.

    A killed run resumes from the batches it finished. `evaluate.devices` > 1 runs that many processes
    (torchrun), each on its share of the batches: the same files (docs/SCALE-OUT.md)."""
    from spotdiff import distributed
    from spotdiff.methods import is_registry_reference
    from spotdiff.params import load_params
    from spotdiff.training.threads import physical_cores

    cfg = load_params(params)
    if mlflow and is_registry_reference(model):
        # The training summary's run is not this model's: its metrics would be misattributed.
        typer.echo(f"note: --model {model} is a registry reference; metrics are not logged to the "
                   f"training run of {run_info} (pass --no-mlflow to silence this)", err=True)
        mlflow = False
    # Inputs are checked once, before any launch: a user's mistake is one line, not one per process.
    devices = cfg.evaluate.devices
    if devices == "auto":  # (inside a launch the count is the launch's own: nothing to decide)
        devices = 1 if distributed.in_launch() else distributed.auto_devices(
            check_inputs(cfg, model, testsets, out), physical_cores())
    elif distributed.wants_launch(devices, cfg.evaluate.num_nodes):
        check_inputs(cfg, model, testsets, out)
    if distributed.wants_launch(devices, cfg.evaluate.num_nodes):
        args = ["evaluate", "--params", str(params), "--model", str(model), "--run-info", str(run_info),
                "--testsets", str(testsets), "--out", str(out), "--mlflow" if mlflow else "--no-mlflow"]
        distributed.launch("evaluate", args, devices, cfg.evaluate.num_nodes)
        return
    run(cfg, model, run_info if mlflow else None, testsets, out, echo=typer.echo,
        warn=lambda line: typer.echo(line, err=True))


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
