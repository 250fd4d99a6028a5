"""Benchmark: CYWS inference engines vs eager fp32 PyTorch, 256² pairs, batch 1 and 16.

Candidates (`spotdiff.methods.engines`): ONNX Runtime (CPU execution provider, the whole two-image
model exported to ONNX), channels_last, torch.compile; on a GPU also bf16 autocast. All are timed in
one process, interleaved round by round with eager (median of the repeats), and each one's boxes are
checked against eager's (same top-k peaks, scores within 1e-4, coordinates within 0.5 px) on a model
whose head is rescaled to give clear peaks and real box sizes (`spread_head_outputs`; weights are
random — no trained R50 ships). Start-up costs (ONNX export, session, first compiled call) are
reported apart. Writes benchmarks/results/cyws_inference.json.

    .venv/bin/python benchmarks/bench_cyws_inference.py [--backbone resnet50] [--size 256]
        [--batches 1 16] [--repeats 5] [--engines onnxruntime channels_last compile] [--threads N]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _timing import interleaved_medians, machine, machine_line  # benchmarks/ is on sys.path

from spotdiff.fsutil import write_json_atomic
from spotdiff.methods.engines import detections_agree, make_engine, run_decoded, spread_head_outputs
from spotdiff.models.cyws import CYWS

RESULTS = Path(__file__).resolve().parent / "results" / "cyws_inference.json"
GOAL = 2.0  # fastest exact engine ≥ 2× eager on CPU at batch 1


def agreement(model: CYWS, engine, eager, image_a, image_b) -> dict:
    ref = run_decoded(eager, image_a, image_b, model.max_boxes, model.output_stride)
    got = run_decoded(engine, image_a, image_b, model.max_boxes, model.output_stride)
    parts = [detections_agree(r, g) for r, g in zip(ref, got)]
    return {"equal": all(p["equal"] for p in parts),
            "peaks_matched": sum(p["peaks_matched"] for p in parts),
            "peaks_compared": sum(p["peaks_compared"] for p in parts),
            "boundary_ties": sum(p["boundary_ties"] for p in parts),
            "max_box_delta_px": max(p["max_box_delta_px"] for p in parts),
            "max_score_delta": max(p["max_score_delta"] for p in parts)}


def bench_device(device: str, args, model: CYWS, candidates: list[str]) -> list[dict]:
    size = args.size
    model = model.to(device).eval()
    eager = make_engine(model, "eager")
    engines, startup = {}, {}
    with tempfile.TemporaryDirectory() as cache:  # cold ONNX cache: the export is timed too
        for kind in candidates:
            t0 = time.perf_counter()
            try:
                engines[kind] = make_engine(model, kind, folder=cache)
            except Exception as exc:  # noqa: BLE001 - report and go on: one broken candidate must not hide the others
                print(f"  {kind}: cannot build ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
                continue
            startup[kind] = {"build_s": round(time.perf_counter() - t0, 2)}
        rows = []
        gen = torch.Generator().manual_seed(1)
        for batch in args.batches:
            image_a = torch.rand(batch, 3, size, size, generator=gen).to(device)
            image_b = image_a.clone()
            image_b[:, :, size // 4: size // 2, size // 4: size // 2] = torch.rand(
                batch, 3, size // 4, size // 4, generator=gen).to(device)  # a pasted square
            batch_engines = {k: e for k, e in engines.items()
                             if k != "compile" or batch in args.compile_batches}
            for kind, engine in list(batch_engines.items()):  # first call: compile traces here; not timed
                t0 = time.perf_counter()
                try:
                    engine(image_a, image_b)
                except Exception as exc:  # noqa: BLE001 - report and go on with the others
                    print(f"  {kind} at batch {batch}: fails ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:120] if str(exc) else ''})")
                    del batch_engines[kind]
                    continue
                startup[kind][f"first_call_b{batch}_s"] = round(time.perf_counter() - t0, 2)
            checks = {kind: agreement(model, e, eager, image_a, image_b) for kind, e in batch_engines.items()}

            def timed(engine, image_a=image_a, image_b=image_b):
                def call():
                    engine(image_a, image_b)
                    if device == "cuda":
                        torch.cuda.synchronize()
                return call

            repeats = args.repeats if batch < 8 else max(2, (args.repeats + 1) // 2)
            medians = interleaved_medians({"eager": timed(eager), **{k: timed(e) for k, e in batch_engines.items()}},
                                          repeats=repeats)
            for kind in ["eager", *batch_engines]:
                rows.append({"device": device, "batch": batch, "engine": kind, "repeats": repeats,
                             "s_per_call": medians[kind], "s_per_pair": medians[kind] / batch,
                             "speedup_vs_eager": medians["eager"] / medians[kind],
                             "boxes_equal_eager": True if kind == "eager" else checks[kind]["equal"],
                             **({} if kind == "eager" else {"agreement": checks[kind]})})
    for row in rows:
        row["startup"] = startup.get(row["engine"], {})
    return rows


def print_table(rows: list[dict], info: dict) -> None:
    print(f"{'device':<7}{'batch':>6}  {'engine':<14}{'s/pair':>9}{'× eager':>9}  "
          f"{'same boxes':<11}{'max Δpx':>9}{'peaks':>11}")
    for r in rows:
        a = r.get("agreement", {})
        peaks = f"{a['peaks_matched']}/{a['peaks_compared']}" if a else "ref"
        dpx = f"{a['max_box_delta_px']:.1e}" if a else "-"
        print(f"{r['device']:<7}{r['batch']:>6}  {r['engine']:<14}{r['s_per_pair']:>9.3f}"
              f"{r['speedup_vs_eager']:>8.2f}×  {r['boxes_equal_eager']!s:<11}{dpx:>9}{peaks:>11}")
    print(machine_line(info))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--engines", nargs="+", default=["onnxruntime", "channels_last", "compile"],
                        help="CPU candidates besides eager (bf16 runs on a GPU only)")
    parser.add_argument("--compile-batches", type=int, nargs="+", default=[1],
                        help="batch sizes compile is timed at (each new shape recompiles: minutes on 2 cores)")
    parser.add_argument("--threads", type=int, default=None, help="torch/ORT intra-op threads (default torch's)")
    parser.add_argument("--results", default=str(RESULTS), help="JSON file to write")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()

    torch.manual_seed(0)
    model = CYWS(backbone=args.backbone, image_size=args.size).eval()
    gen = torch.Generator().manual_seed(0)
    calib = torch.rand(2, 3, args.size, args.size, generator=gen)
    spread_head_outputs(model, calib, calib.flip(-1))

    print(f"CYWS {args.backbone}@{args.size} inference engines vs eager fp32 (random weights, head rescaled)")
    rows = bench_device("cpu", args, model, args.engines)
    gpu_note = None
    if torch.cuda.is_available():
        gpu_candidates = [k for k in ("channels_last", "bf16", "compile") if k in args.engines or k == "bf16"]
        rows += bench_device("cuda", args, model, gpu_candidates)
    else:
        gpu_note = "GPU: skipped (no CUDA device on this machine): bf16 autocast / compile on GPU not measured"
    print_table(rows, info)
    if gpu_note:
        print(gpu_note)

    exact = [r for r in rows if r["device"] == "cpu" and r["batch"] == min(args.batches)
             and r["engine"] != "eager" and r["boxes_equal_eager"]]
    best = max(exact, key=lambda r: r["speedup_vs_eager"], default=None)
    if best:
        print(f"fastest exact CPU engine at batch {best['batch']}: {best['engine']} "
              f"{best['speedup_vs_eager']:.2f}× eager (goal ≥ {GOAL}×)")
    write_json_atomic(Path(args.results), {
        "benchmark": "cyws_inference_engines_vs_eager",
        "model": {"backbone": args.backbone, "image_size": args.size, "weights": "random, head rescaled"},
        "rows": rows, "goal_speedup_batch1_cpu": GOAL,
        "fastest_exact_cpu": best and {"engine": best["engine"], "speedup": best["speedup_vs_eager"]},
        "gpu_note": gpu_note, "machine": info,
        "command": "python benchmarks/bench_cyws_inference.py " + " ".join(
            f"--{k} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
            if v is not None and k != "results")})
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
