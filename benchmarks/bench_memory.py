"""Benchmark: peak memory of CYWS inference (per engine) and of a training step (per precision).

Each measurement runs in its own child process, so the peak is that job's alone: on the CPU the
peak resident set size (`ru_maxrss`) minus the RSS after imports, on a GPU
`torch.cuda.max_memory_allocated`. Inference: R50@256 (the paper's model), batch 1 and 16, eager vs
ONNX Runtime (the default engine on a CPU); training: the embedded profile's model and batch, fp32
vs bf16 autocast + channels_last. Without a GPU the GPU part is skipped with the reason printed.
Writes benchmarks/results/memory.json.

    .venv/bin/python benchmarks/bench_memory.py [--batches 1 16] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from _timing import machine, machine_line  # benchmarks/ is on sys.path when run as a script

RESULTS = Path(__file__).resolve().parent / "results" / "memory.json"


def rss_mb() -> float:
    """Current resident set size in MB (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def child(job: dict) -> dict:
    import torch

    if job.get("threads"):
        torch.set_num_threads(job["threads"])
    device = job["device"]
    base_rss = rss_mb()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if job["kind"] == "infer":
        from spotdiff.methods.engines import make_engine
        from spotdiff.models.cyws import CYWS

        torch.manual_seed(0)
        model = CYWS(backbone=job["backbone"], image_size=job["size"]).eval().to(device)
        engine = make_engine(model, job["engine"], folder=job.get("cache"))
        a = torch.rand(job["batch"], 3, job["size"], job["size"], device=device)
        for _ in range(2):
            engine(a, a)
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from bench_train_step import Step, random_batch

        from spotdiff.models.cyws import CYWS
        from spotdiff.params import DEFAULT_PARAMS_PATH, Params, load_params

        params = load_params(DEFAULT_PARAMS_PATH) if DEFAULT_PARAMS_PATH.is_file() else Params()
        torch.manual_seed(0)
        base = CYWS.from_params(params.model)
        batch = random_batch(params.train.batch_size, params.model.image_size, device)
        step = Step(base, job["variant"], params.train.lr, params.train.weight_decay, device, batch)
        del base
        for _ in range(2):
            step()
        job = {**job, "backbone": params.model.backbone, "size": params.model.image_size,
               "batch": params.train.batch_size}
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KB → MB on Linux
    out = {**job, "peak_rss_mb": peak_rss, "rss_after_imports_mb": base_rss, "peak_rss_delta_mb": peak_rss - base_rss}
    if device == "cuda":
        out["max_memory_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_child(job: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(job)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{job}: child failed\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return 0

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory() as cache:
        # export once up front, so the timed children load the graph (as a second `detect` does)
        warm = {"kind": "infer", "device": "cpu", "backbone": args.backbone, "size": args.size,
                "engine": "onnxruntime", "batch": 1, "cache": cache, "threads": args.threads}
        run_child(warm)
        for device in devices:
            engines = ["eager", "onnxruntime"] if device == "cpu" else ["eager", "bf16"]
            for batch in args.batches:
                for engine in engines:
                    rows.append(run_child({**warm, "device": device, "engine": engine, "batch": batch}))
            for variant in ["fp32", "bf16+channels_last"]:
                rows.append(run_child({"kind": "train", "device": device, "variant": variant,
                                       "threads": args.threads}))
    print("Peak memory (each job in its own process; CPU: peak RSS minus RSS after imports)")
    print(f"{'device':<7}{'job':<44}{'peak MB':>9}{'Δ MB':>8}{'vs baseline':>13}")
    baseline: dict = {}
    for r in rows:
        what = (f"inference {r['backbone']}@{r['size']} b{r['batch']} {r['engine']}" if r["kind"] == "infer"
                else f"train step {r['backbone']}@{r['size']} b{r['batch']} {r['variant']}")
        key = (r["device"], r["kind"], r.get("batch"))
        value = r.get("max_memory_allocated_mb") if r["device"] == "cuda" else r["peak_rss_delta_mb"]
        baseline.setdefault(key, value)
        r["vs_baseline"] = value / baseline[key] if baseline[key] else None
        print(f"{r['device']:<7}{what:<44}{r['peak_rss_mb']:>9.0f}{value:>8.0f}{r['vs_baseline']:>12.2f}×")
    gpu_note = None if "cuda" in devices else "GPU: skipped (no CUDA device on this machine): max_memory_allocated not measured"
    print(machine_line(info))
    if gpu_note:
        print(gpu_note)
    from spotdiff.fsutil import write_json_atomic

    write_json_atomic(RESULTS, {"benchmark": "peak_memory", "rows": rows, "gpu_note": gpu_note, "machine": info,
                                "baseline": "eager (inference) / fp32 (training) of the same batch",
                                "command": "python benchmarks/bench_memory.py"})
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
