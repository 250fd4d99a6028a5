"""Benchmark: CYWS training-step throughput (pairs/s) — fp32 eager vs channels_last, bf16 autocast, compile.

The embedded profile's model (params.yaml `model`: ResNet-18 at its image size) with its CenterNet
loss and Adam (train.lr, train.weight_decay), batch `train.batch_size`, on random images with 1-4
boxes per image. Every variant starts from the same weights and is timed in interleaved rounds with
the fp32 eager baseline (`train.precision: 32-true`), median of the repeats, in one
process. On a GPU the same variants run again there (bf16 + channels_last + compile is the paper
profile's recipe); without one that part is skipped with the reason printed.

Also measured: the training dataloader's throughput (PairDataset over a pairs manifest — the
pipeline's data/pairs/manifest.json, or one generated from params.yaml into a temp folder), with
0/1/2 worker processes, so the step never waits for data.

Writes benchmarks/results/train_step.json.

    .venv/bin/python benchmarks/bench_train_step.py [--repeats 5] [--threads N] [--compile]
        [--manifest data/pairs/manifest.json] [--skip-loader]
"""

from __future__ import annotations

import argparse
import copy
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _timing import interleaved_medians, machine, machine_line  # benchmarks/ is on sys.path

from spotdiff.fsutil import write_json_atomic
from spotdiff.machine import capabilities, resolve_precision
from spotdiff.models.cyws import CYWS, DECODER_CHANNELS
from spotdiff.params import DEFAULT_PARAMS_PATH, Params, load_params, to_flat_dict

RESULTS = Path(__file__).resolve().parent / "results" / "train_step.json"
ROOT = Path(__file__).resolve().parents[1]
GOAL = 1.5  # CPU step ≥ 1.5× today's (fp32 eager) on the embedded profile


def random_batch(batch: int, size: int, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    image_a = torch.rand(batch, 3, size, size, generator=gen)
    image_b = torch.rand(batch, 3, size, size, generator=gen)

    def boxes() -> list[torch.Tensor]:
        out = []
        for _ in range(batch):
            n = int(torch.randint(1, 5, (), generator=gen))
            xy = torch.rand(n, 2, generator=gen) * size * 0.7
            wh = 4 + torch.rand(n, 2, generator=gen) * size * 0.3
            out.append(torch.cat([xy, (xy + wh).clamp(max=size)], 1).to(device))
        return out

    return image_a.to(device), image_b.to(device), boxes(), boxes()


class Step:
    """One optimiser step of a variant: zero_grad, forward (+loss) under its precision, backward, Adam."""

    def __init__(self, base: CYWS, variant: str, lr: float, weight_decay: float, device: str, batch) -> None:
        self.variant, self.device = variant, device
        model = copy.deepcopy(base).to(device).train()
        self.channels_last = "channels_last" in variant
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.forward = torch.compile(model) if "compile" in variant else model
        self.bf16 = "bf16" in variant
        self.optimizer = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        image_a, image_b, self.boxes_a, self.boxes_b = batch
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        self.image_a = image_a.contiguous(memory_format=fmt)
        self.image_b = image_b.contiguous(memory_format=fmt)

    def __call__(self) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(torch.device(self.device).type, dtype=torch.bfloat16, enabled=self.bf16):
            out_a, out_b = self.forward(self.image_a, self.image_b)
            loss = self.model.loss(out_a, out_b, self.boxes_a, self.boxes_b)["loss"]
        loss.backward()
        self.optimizer.step()
        if self.device == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())


REFERENCE_WIDTHS = "reference decoder widths, "


def bench_steps(params: Params, device: str, variants: list[str], repeats: int) -> list[dict]:
    """Median s/step of fp32 eager and each variant, interleaved. When the profile narrows the decoder
    (`model.decoder_channels`), the same model with the reference widths runs too (variants prefixed
    "reference decoder widths, "): the profile's step before that change, in the same run."""
    torch.manual_seed(params.train.seed)
    base = CYWS.from_params(params.model)
    size, batch_size = params.model.image_size, params.train.batch_size
    batch = random_batch(batch_size, size, device)
    reference = None
    if tuple(params.model.decoder_channels) != tuple(DECODER_CHANNELS):
        reference = CYWS.from_params({**to_flat_dict(params.model), "decoder_channels": DECODER_CHANNELS})
        variants = [*variants, REFERENCE_WIDTHS + "fp32", REFERENCE_WIDTHS + "bf16"]
    steps, first_call = {}, {}
    for variant in ["fp32", *variants]:
        model = reference if variant.startswith(REFERENCE_WIDTHS) else base
        step = Step(model, variant, params.train.lr, params.train.weight_decay, device, batch)
        t0 = time.perf_counter()
        loss0 = step()  # warm-up (compiles for "compile" variants)
        first_call[variant] = {"first_step_s": round(time.perf_counter() - t0, 2), "first_loss": loss0}
        steps[variant] = step
    medians = interleaved_medians(steps, repeats=repeats, warmup=1)
    rows = []
    for variant in steps:
        s = medians[variant]
        widths = DECODER_CHANNELS if variant.startswith(REFERENCE_WIDTHS) else params.model.decoder_channels
        rows.append({"device": device, "variant": variant, "batch": batch_size, "image_size": size,
                     "backbone": params.model.backbone, "decoder_channels": list(widths), "s_per_step": s, "pairs_per_s": batch_size / s,
                     "speedup_vs_fp32": medians["fp32"] / s, "repeats": repeats, **first_call[variant]})
    return rows


def make_manifest(folder: Path) -> Path:
    """Run the data → inpaint → pairs stages of params.yaml into `folder`; returns the manifest."""
    exe = [sys.executable, "-m", "spotdiff.cli"]
    params = str(DEFAULT_PARAMS_PATH if DEFAULT_PARAMS_PATH.is_file() else ROOT / "params.yaml")
    for cmd in (["data", "--params", params, "--out", str(folder / "source")],
                ["inpaint", "--params", params, "--source", str(folder / "source"), "--out", str(folder / "inpainted")],
                ["pairs", "--params", params, "--inpainted", str(folder / "inpainted"), "--out", str(folder / "pairs")]):
        subprocess.run(exe + cmd, check=True, capture_output=True, text=True)
    return folder / "pairs" / "manifest.json"


def bench_loader(params: Params, manifest: Path, workers: list[int], batches: int) -> list[dict]:
    from torch.utils.data import DataLoader

    from spotdiff.data.pairs_dataset import PairDataset, collate_pairs

    dataset = PairDataset(manifest, "train", params.model.image_size, params.pairs.augment, seed=params.train.seed)
    rows = []
    for n in workers:
        loader = DataLoader(dataset, batch_size=params.train.batch_size, shuffle=True, num_workers=n,
                            collate_fn=collate_pairs, persistent_workers=False)
        t0 = time.perf_counter()
        pairs, done = 0, 0
        while done < batches:
            for item in loader:
                pairs += item["image_a"].shape[0]
                done += 1
                if done >= batches:
                    break
        seconds = time.perf_counter() - t0  # worker start-up included, as a training epoch sees it
        rows.append({"num_workers": n, "batches": done, "pairs": pairs, "seconds": seconds,
                     "pairs_per_s": pairs / seconds})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default=str(DEFAULT_PARAMS_PATH))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile on the CPU (its first step compiles for minutes on 2 cores)")
    parser.add_argument("--manifest", default=None, help="pairs manifest for the loader (default: generated)")
    parser.add_argument("--loader-batches", type=int, default=12)
    parser.add_argument("--skip-loader", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    params = load_params(Path(args.params)) if Path(args.params).is_file() else Params()
    info = machine()

    cpu_variants = ["channels_last", "bf16", "bf16+channels_last"] + (["compile", "bf16+channels_last+compile"]
                                                                      if args.compile else [])
    print(f"CYWS training step, {params.model.backbone}@{params.model.image_size}, batch "
          f"{params.train.batch_size}, Adam: fp32 eager vs the other variants")
    rows = bench_steps(params, "cpu", cpu_variants, args.repeats)
    gpu_note = None
    if torch.cuda.is_available():
        rows += bench_steps(params, "cuda", ["channels_last", "bf16", "bf16+channels_last",
                                              "bf16+channels_last+compile"], args.repeats)
    else:
        gpu_note = "GPU: skipped (no CUDA device on this machine): GPU step throughput not measured"

    print(f"{'device':<7}{'variant':<28}{'s/step':>8}{'pairs/s':>9}{'× fp32':>8}{'first step s':>14}")
    for r in rows:
        print(f"{r['device']:<7}{r['variant']:<28}{r['s_per_step']:>8.3f}{r['pairs_per_s']:>9.2f}"
              f"{r['speedup_vs_fp32']:>7.2f}×{r['first_step_s']:>14.1f}")
    print(machine_line(info))
    if gpu_note:
        print(gpu_note)

    loader_rows, loader_note = [], None
    if not args.skip_loader:
        with tempfile.TemporaryDirectory() as tmp:
            manifest = Path(args.manifest) if args.manifest else make_manifest(Path(tmp))
            loader_rows = bench_loader(params, manifest, [0, 1, 2], args.loader_batches)
        fastest_step = max(r["pairs_per_s"] for r in rows if r["device"] == "cpu")
        print(f"{'loader workers':<16}{'pairs/s':>9}{'vs fastest CPU step':>22}")
        for r in loader_rows:
            print(f"{r['num_workers']:<16}{r['pairs_per_s']:>9.1f}{r['pairs_per_s'] / fastest_step:>21.1f}×")
        loader_note = (f"the loader in the main process gives {loader_rows[0]['pairs_per_s']:.1f} pairs/s, "
                       f"{loader_rows[0]['pairs_per_s'] / fastest_step:.1f}× the fastest CPU step's need")
        print(loader_note)

    cpu = [r for r in rows if r["device"] == "cpu" and not r["variant"].startswith(REFERENCE_WIDTHS)]
    best = max(cpu, key=lambda r: r["speedup_vs_fp32"])
    ref = {r["variant"][len(REFERENCE_WIDTHS):]: r for r in rows
           if r["device"] == "cpu" and r["variant"].startswith(REFERENCE_WIDTHS)}
    vs_today = None
    if ref:
        for name, r in ref.items():
            print(f"profile's fastest ({best['variant']}) vs the reference widths in {name}: "
                  f"{r['s_per_step'] / best['s_per_step']:.2f}×")
        if "fp32" in ref:
            # The "today": this profile's model before its decoder was narrowed, in fp32 eager.
            vs_today = ref["fp32"]["s_per_step"] / best["s_per_step"]
            print(f"embedded profile's step ({best['variant']}, its decoder widths) vs the reference widths "
                  f"(reference widths, fp32 eager): {vs_today:.2f}× (goal ≥ {GOAL}×)")
    print(f"same model, fastest CPU variant: {best['variant']} {best['speedup_vs_fp32']:.2f}× fp32")
    auto, _ = resolve_precision("auto", on_gpu=False, caps=capabilities(with_cuda=False))
    auto_variant = "bf16" if auto.startswith("bf16") else "fp32"
    auto_row = next(r for r in cpu if r["variant"] == auto_variant)
    print(f"train.precision auto resolves to {auto} on this CPU: {auto_row['s_per_step']:.3f} s/step, "
          f"{auto_row['s_per_step'] / best['s_per_step']:.2f}× the fastest variant's time")
    write_json_atomic(RESULTS, {
        "benchmark": "cyws_train_step_throughput", "rows": rows, "loader": loader_rows,
        "loader_note": loader_note, "goal_speedup_cpu": GOAL,
        "fastest_cpu": {"variant": best["variant"], "speedup": best["speedup_vs_fp32"]},
        "precision_auto": auto,
        "profile_vs_reference_widths_fp32": vs_today,
        "gpu_note": gpu_note, "machine": info,
        "command": "python benchmarks/bench_train_step.py" + (" --compile" if args.compile else "")})
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
