"""The GPU checks in one run (benchmarks/gpu_check.sh): figures as JSON, within about 8 minutes on one
H100/H200. Without CUDA it says it skipped and exits 0.

1. Paper-size training step (R50 + 3×CoAM + scSE, 256², batch 16, Adam): fp32 against bf16 autocast,
   median s/step and peak `max_memory_allocated`.
2. Inference pairs/s at batch 64 (eager fp32 and bf16 autocast), and whether bf16 keeps the boxes.
3. The published-checkpoint path on CUDA: a file in the authors' layout (random weights, tagged
   cuda:0 as theirs is) loads with `load_model`, and its forward on the GPU matches the CPU's.
4. A one-GPU DDP launch through Lightning: the real `spotdiff data/inpaint/pairs/train` commands on a
   tiny generated set with `train.strategy: ddp`, `accelerator: gpu`, `devices: 1`.

    .venv/bin/python benchmarks/gpu_check.py [--out benchmarks/results/gpu_check.json] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
from _timing import machine, machine_line  # benchmarks/ is on sys.path
from bench_train_step import random_batch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "gpu_check.json"


def _median_time(fn, steps: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def train_step(steps: int) -> dict:
    from spotdiff.models.cyws import CYWS

    out = {}
    for variant in ("fp32", "bf16"):
        torch.manual_seed(0)
        model = CYWS(backbone="resnet50").cuda().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
        a, b, ba, bb = random_batch(16, 256, "cuda")

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=variant == "bf16"):
                oa, ob = model(a, b)
                loss = model.loss(oa, ob, ba, bb)["loss"]
            loss.backward()
            opt.step()

        torch.cuda.reset_peak_memory_stats()
        s = _median_time(step, steps)
        out[variant] = {"s_per_step": s, "pairs_per_s": 16 / s,
                        "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}
        torch.cuda.empty_cache()
    out["bf16_speedup"] = out["fp32"]["s_per_step"] / out["bf16"]["s_per_step"]
    return out


def inference(steps: int) -> dict:
    from spotdiff.methods.engines import detections_agree  # noqa: F401 - same oracle as the CPU engines
    from spotdiff.models.centernet import decode
    from spotdiff.models.cyws import CYWS

    torch.manual_seed(0)
    model = CYWS(backbone="resnet50").cuda().eval()
    a, b = torch.rand(64, 3, 256, 256, device="cuda"), torch.rand(64, 3, 256, 256, device="cuda")
    out = {}
    with torch.no_grad():
        for variant in ("fp32", "bf16"):
            def fwd():
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=variant == "bf16"):
                    return model(a, b)

            torch.cuda.reset_peak_memory_stats()
            s = _median_time(fwd, steps)
            out[variant] = {"s_per_batch": s, "pairs_per_s": 64 / s,
                            "peak_memory_mb": torch.cuda.max_memory_allocated() / 2**20}
        fp32_a, _ = model(a[:4], b[:4])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            bf16_a, _ = model(a[:4], b[:4])
        boxes32 = decode({k: v.float() for k, v in fp32_a.items()}, 10)
        boxes16 = decode({k: v.float() for k, v in bf16_a.items()}, 10)
        out["bf16_max_heatmap_logit_diff"] = float((fp32_a["heatmap"] - bf16_a["heatmap"].float()).abs().max())
        out["bf16_top10_same_peaks"] = all(torch.equal(x[0].round(), y[0].round()) for x, y in zip(boxes32, boxes16))
    return out


def published_on_cuda() -> dict:
    from spotdiff.models.checkpoint import load_model
    from spotdiff.models.cyws import CYWS
    from spotdiff.models.official import REFERENCE_SETTINGS, to_published

    torch.manual_seed(0)
    ref = CYWS(backbone="resnet50", **{k: v for k, v in REFERENCE_SETTINGS.items() if k != "pretrained_weights"})
    state = {k: v.cuda() for k, v in to_published(ref.state_dict()).items()}  # tagged cuda:0, as theirs
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "published-layout.ckpt"
        torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": "1.5.8", "state_dict": state,
                    "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}, path)
        model = load_model(path)
    gen = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 256, 256, generator=gen), torch.rand(2, 3, 256, 256, generator=gen)
    with torch.no_grad():
        cpu_a, _ = model.eval()(a, b)
        gpu_a, _ = model.cuda()(a.cuda(), b.cuda())
    diff = float((cpu_a["heatmap"] - gpu_a["heatmap"].cpu()).abs().max())
    return {"loaded": True, "max_heatmap_logit_diff_cpu_vs_cuda": diff, "equivalent": diff < 1e-2}


def ddp_launch(timeout: int) -> dict:
    import yaml

    exe = [sys.executable, "-m", "spotdiff.cli"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(num_images=12)
    params["pairs"].update(pairs_per_image=2)
    params["train"].update(accelerator="gpu", devices=1, strategy="ddp", max_steps=20, val_every_n_steps=10,
                           batch_size=4, precision="auto")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = str(tmp / "params.yaml")
        t0 = time.time()
        for cmd in (["data", "--params", p, "--out", str(tmp / "source")],
                    ["inpaint", "--params", p, "--source", str(tmp / "source"), "--out", str(tmp / "inpainted")],
                    ["pairs", "--params", p, "--inpainted", str(tmp / "inpainted"), "--out", str(tmp / "pairs")],
                    ["train", "--params", p, "--pairs", str(tmp / "pairs" / "manifest.json"),
                     "--out", str(tmp / "models"), "--no-tracking"]):
            r = subprocess.run(exe + cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp)
            if r.returncode:
                return {"ok": False, "command": cmd[0], "stderr_tail": r.stderr[-1500:]}
        run = json.loads((tmp / "models" / "train_run.json").read_text())
        return {"ok": True, "seconds": round(time.time() - t0, 1), "precision": run.get("precision"),
                "steps": json.loads((tmp / "models" / "train.json").read_text())["steps"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    info = machine()
    print(machine_line(info))
    if not torch.cuda.is_available():
        print("gpu_check: skipped: no CUDA device on this machine (nothing measured)")
        return 0
    result: dict = {"machine": info, "device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    checks = (("train_step_r50_256_b16", lambda: train_step(args.steps)),
              ("inference_r50_256_b64", lambda: inference(args.steps)),
              ("published_checkpoint_on_cuda", published_on_cuda),
              ("ddp_one_gpu_launch", lambda: ddp_launch(240)))
    failed = 0
    for name, fn in checks:
        t0 = time.time()
        try:
            result[name] = fn()
        except Exception as exc:  # one failing check must not hide the others' figures
            failed += 1
            result[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
        result[name]["check_seconds"] = round(time.time() - t0, 1)
        print(f"{name}: {json.dumps({k: v for k, v in result[name].items() if k != 'traceback'})}", flush=True)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}; {failed} check(s) failed")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    raise SystemExit(main())
