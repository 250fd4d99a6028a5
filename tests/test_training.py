"""What makes CPU training worth its minutes (issue F7): the LR schedule, threads, the geometry
curriculum, the step budget and the validation AP in the MLflow history. Tiny and fast."""

from __future__ import annotations

import itertools
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from spotdiff.cli import main
from spotdiff.data.pairs_dataset import AffineCurriculum, CurriculumSampler, PairDataset
from spotdiff.data.transforms import PairAugmenter
from spotdiff.params import AugmentParams, TrainParams
from spotdiff.training.lit import WarmupCosine
from spotdiff.training.threads import apply_threads, physical_cores

TINY = {
    "data": {"num_images": 8, "image_width": 128, "image_height": 96, "min_objects": 2, "max_objects": 3},
    "inpaint": {"max_versions": 2},
    "pairs": {"val_fraction": 0.25, "pairs_per_image": 1, "preview_count": 0},
    # The paper's model settings and an epoch-based fp32 recipe, spelled out: the built-in defaults
    # are params.yaml's embedded recipe (quarter decoder widths, sqrt_d, a 1 200-step bf16 budget).
    "model": {"backbone": "resnet18", "image_size": 64, "attention_scale": "none",
              "decoder_channels": [256, 256, 128, 128, 64]},
    "train": {"batch_size": 4, "log_every_n_steps": 1, "preview_pairs": 1, "lr": 0.0001, "max_steps": -1,
              "lr_schedule": "constant", "warmup_steps": 0, "val_every_n_steps": 0, "monitor": "val/loss",
              "precision": "32-true", "affine_start_step": 0, "affine_ramp_steps": 0},
}


@pytest.fixture(scope="module")
def tiny_pairs(tmp_path_factory):
    """A tiny real pairs manifest made by the project's own stages."""
    root = tmp_path_factory.mktemp("pipeline")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(TINY))
    for args in (["data", "--out", str(root / "data/source")],
                 ["inpaint", "--source", str(root / "data/source"), "--out", str(root / "data/inpainted")],
                 ["pairs", "--inpainted", str(root / "data/inpainted"), "--out", str(root / "data/pairs")]):
        assert main([args[0], "--params", str(params), *args[1:]]) == 0, args
    return root


def test_warmup_cosine_shape():
    f = WarmupCosine("cosine", warmup_steps=10, total_steps=110, start_factor=0.01, min_factor=0.05)
    assert f(0) == pytest.approx(0.01)
    values = [f(s) for s in range(111)]
    assert all(b > a for a, b in itertools.pairwise(values[:11]))  # rising warm-up
    assert f(10) == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values[10:]))  # then never rising
    assert f(60) == pytest.approx(0.05 + 0.95 * 0.5)  # half-way down the cosine
    assert f(110) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)
    constant = WarmupCosine("constant", warmup_steps=4, total_steps=100)
    assert constant(2) < 1 and constant(4) == 1.0 and constant(99) == 1.0


def test_num_threads_applied(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert apply_threads(TrainParams(num_threads=1)) == 1 and torch.get_num_threads() == 1
        assert apply_threads(TrainParams(num_threads=0)) == physical_cores() >= 1
        assert torch.get_num_threads() == physical_cores()
    finally:
        torch.set_num_threads(before)


def test_curriculum_strength_and_sampler_steps():
    c = AffineCurriculum(start_step=4, ramp_steps=2)
    assert [c.strength(s) for s in range(7)] == [0, 0, 0, 0, 0.5, 1.0, 1.0]
    assert AffineCurriculum().strength(0) == 1.0
    sampler = CurriculumSampler(10, batch_size=4, seed=3, curriculum=c)  # 3 steps per epoch
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(k[0] for k in epoch0) == list(range(10)) and [k[1] for k in epoch1] == list(range(10, 20))
    assert [k[2] for k in epoch0] == [0.0] * 10
    assert [k[2] for k in epoch1] == [0.0] * 4 + [0.5] * 4 + [1.0] * 2  # steps 3, 4, 5
    sampler.set_epoch(1)
    assert list(sampler) == epoch1  # replayable


def test_curriculum_switches_geometry():
    """Strength 0: identity geometry (boxes where the objects are); strength 1: the configured affine."""
    aug = PairAugmenter(AugmentParams(jitter=0.0, rotation_deg=30, translate=0.2), image_size=64)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    masks = np.zeros((1, 64, 64), dtype=bool)
    masks[0, 20:40, 10:30] = True
    still = aug(image, image, masks, rng=np.random.default_rng(0), strength=0.0)
    assert still.params_a["aff"]["angle"].item() == 0 and still.params_b["aff"]["scale"].eq(1).all()
    assert still.boxes_a.tolist() == [[10.0, 20.0, 30.0, 40.0]] == still.boxes_b.tolist()
    moved = aug(image, image, masks, rng=np.random.default_rng(0), strength=1.0)
    assert moved.params_a["aff"]["angle"].abs().item() > 0
    half = aug(image, image, masks, rng=np.random.default_rng(0), strength=0.5)
    assert half.params_a["aff"]["angle"].item() == pytest.approx(0.5 * moved.params_a["aff"]["angle"].item())


def test_dataset_keys_are_deterministic(tiny_pairs):
    ds = PairDataset(tiny_pairs / "data/pairs/manifest.json", "train", 64, AugmentParams(), seed=0)
    one, again, other = ds[(0, 5, 1.0)], ds[(0, 5, 1.0)], ds[(0, 6, 1.0)]
    assert torch.equal(one["image_a"], again["image_a"])
    assert not torch.equal(one["image_a"], other["image_a"])


def test_step_budget_schedule_and_val_ap_in_mlflow(tiny_pairs, tmp_path, monkeypatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    cfg = yaml.safe_load((tiny_pairs / "params.yaml").read_text())
    cfg["model"]["attention_scale"] = "sqrt_d"
    cfg["train"].update({"max_steps": 4, "val_every_n_steps": 2, "lr_schedule": "cosine", "warmup_steps": 1,
                         "num_threads": 1, "affine_start_step": 2, "affine_ramp_steps": 1,
                         "monitor": "val/ap50", "lr": 0.001})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    before = torch.get_num_threads()
    try:
        assert main(["train", "--params", str(params), "--pairs", str(tiny_pairs / "data/pairs/manifest.json"),
                     "--out", str(tmp_path / "models")]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    summary = json.loads((tmp_path / "models" / "train.json").read_text())
    run_info = json.loads((tmp_path / "models" / "train_run.json").read_text())
    assert summary["steps"] == 4 and run_info["threads"] == 1 and summary["monitor"] == "val/ap50"
    # train.json is a DVC output: nothing in it may change from run to run but the model's figures.
    assert not {"seconds", "threads", "mlflow_run_id", "tracking_uri"} & set(summary)
    assert run_info["seconds"] > 0 and run_info["cpu_seconds"] > 0
    client = mlflow.MlflowClient(tracking_uri=uri)
    run_id = run_info["mlflow_run_id"]
    assert client.get_run(run_id).data.tags["spotdiff.model_md5"] == run_info["model_md5"]
    ap = client.get_metric_history(run_id, "val/ap50")
    assert [m.step for m in ap] == [1, 3] or len(ap) == 2  # one per validation (Lightning's step index)
    assert all(0.0 <= m.value <= 1.0 for m in ap)
    assert summary["best_val_ap50"] == pytest.approx(max(m.value for m in ap), abs=1e-6)
    lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr-Adam"), key=lambda m: m.step)]
    assert len(lrs) == 4 and lrs[0] == pytest.approx(0.001 * 0.01) and lrs[1] == pytest.approx(0.001)
    assert lrs[3] < lrs[2] < lrs[1]
    assert math.isfinite(summary["best_val_loss"])


def test_same_params_same_model_bytes(tiny_pairs, tmp_path):
    """Bit-for-bit: the same params (curriculum, schedule, one loader worker) give the same cyws.pt."""
    cfg = yaml.safe_load((tiny_pairs / "params.yaml").read_text())
    cfg["train"].update({"max_steps": 3, "val_every_n_steps": 3, "lr_schedule": "cosine", "warmup_steps": 1,
                         "num_threads": 1, "affine_start_step": 1, "affine_ramp_steps": 1, "num_workers": 1})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    # Each run in a fresh process, as DVC runs the stage: a loader worker forked from the test process
    # (with the threads earlier tests left running) is not what the pipeline does.
    for run in ("one", "two"):
        argv = ["train", "--params", str(params), "--pairs", str(tiny_pairs / "data/pairs/manifest.json"),
                "--out", str(tmp_path / run), "--no-tracking"]
        done = subprocess.run([sys.executable, "-c", f"from spotdiff.cli import main; raise SystemExit(main({argv!r}))"],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "one" / "cyws.pt").read_bytes() == (tmp_path / "two" / "cyws.pt").read_bytes()
