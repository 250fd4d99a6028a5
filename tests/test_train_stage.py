"""The `train` stage: tiny real runs (data → inpaint → pairs → train) on CPU, tracked in MLflow: the
epoch recipe, the step budget with its schedule and validation AP (issue F7), byte-identical models,
two-process DDP. The training pieces themselves: test_training.py."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from helpers.env import SPOTDIFF, subprocess_env
from helpers.pipeline import TINY_EPOCHS, TINY_STEPS
from spotdiff.cli import main
from spotdiff.models.checkpoint import load_model


def _run(args: list[str]) -> None:
    assert main(args) == 0, args


@pytest.fixture(scope="module")
def tiny_pairs(tiny_pipeline) -> Path:
    """A tiny real pairs manifest made by the project's own stages; params.yaml: two epochs."""
    return tiny_pipeline(TINY_EPOCHS)


@pytest.fixture(scope="module")
def tiny_pairs_steps(tiny_pipeline) -> Path:
    """The same, with the CPU-training tests' recipe (issue F7) in params.yaml, which each test edits."""
    return tiny_pipeline(TINY_STEPS)


def test_train_writes_model_and_mlflow_history(tiny_pairs, tmp_path, mlflow_store):
    import mlflow

    out = tmp_path / "models"
    _run(["train", "--params", str(tiny_pairs / "params.yaml"),
          "--pairs", str(tiny_pairs / "data/pairs/manifest.json"), "--out", str(out)])
    summary = json.loads((out / "train.json").read_text())
    assert summary["epochs"] == 2 and summary["train_pairs"] > 0 and summary["val_pairs"] > 0
    assert (out / "val_predictions.png").stat().st_size > 0

    client = mlflow.MlflowClient(tracking_uri=mlflow_store)
    run_id = json.loads((out / "train_run.json").read_text())["mlflow_run_id"]
    for key in ("val/loss", "val/size", "val/ap50"):
        history = client.get_metric_history(run_id, key)
        assert len(history) == 2, key  # one value per validation (here: per epoch)
    steps = summary["steps"]
    for key in ("train/loss", "train/heatmap"):
        history = client.get_metric_history(run_id, key)
        assert len(history) == steps, key  # one value per step (log_every_n_steps: 1)
    run = client.get_run(run_id)
    assert run.data.params["model.backbone"] == "resnet18"
    assert run.data.params["train.lr"] == "0.0001"
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model", "previews"} <= artifacts
    best_val = min(m.value for m in client.get_metric_history(run_id, "val/loss"))
    assert summary["best_val_loss"] == pytest.approx(best_val, rel=1e-5)

    # the kept model reloads and is deterministic and symmetric
    model = load_model(out / "cyws.pt")
    assert model.config["image_size"] == 64
    gen = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 64, 64, generator=gen), torch.rand(2, 3, 64, 64, generator=gen)
    dets_a, dets_b = model.predict(a, b)
    again_a, _ = load_model(out / "cyws.pt").predict(a, b)
    swap_a, swap_b = model.predict(b, a)
    for (b1, s1), (b2, s2) in zip(dets_a, again_a):
        assert torch.equal(b1, b2) and torch.equal(s1, s2)
    for (b1, s1), (b2, s2) in zip(dets_a, swap_b):
        assert torch.allclose(b1, b2) and torch.allclose(s1, s2, atol=1e-6)
    for (b1, _), (b2, _) in zip(dets_b, swap_a):
        assert torch.allclose(b1, b2)


def test_train_without_manifest_is_a_clear_error(tmp_path, capsys):
    code = main(["train", "--params", str(Path(__file__).resolve().parents[1] / "params.yaml"),
                 "--pairs", str(tmp_path / "missing.json"), "--out", str(tmp_path / "m"), "--no-tracking"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pairs manifest not found" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "m" / "cyws.pt").exists()


@pytest.mark.slow
def test_two_process_cpu_ddp(tiny_pairs, tmp_path):
    """`strategy: ddp`, `devices: 2` on CPU (gloo): Lightning re-launches the command for rank 1."""
    cfg = yaml.safe_load((tiny_pairs / "params.yaml").read_text())
    cfg["train"].update({"strategy": "ddp", "devices": 2, "max_epochs": 1})
    cfg["mlflow"] = {"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    env = subprocess_env(drop=("MLFLOW_TRACKING_URI",))
    proc = subprocess.run(
        [str(SPOTDIFF), "train", "--params", str(params),
         "--pairs", str(tiny_pairs / "data/pairs/manifest.json"), "--out", str(tmp_path / "models")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "distributed_backend=gloo" in proc.stderr + proc.stdout
    summary = json.loads((tmp_path / "models" / "train.json").read_text())
    assert summary["epochs"] == 1
    load_model(tmp_path / "models" / "cyws.pt")


def test_step_budget_schedule_and_val_ap_in_mlflow(tiny_pairs_steps, tmp_path, mlflow_store):
    import mlflow

    uri = mlflow_store
    cfg = yaml.safe_load((tiny_pairs_steps / "params.yaml").read_text())
    cfg["model"]["attention_scale"] = "sqrt_d"
    cfg["train"].update({"max_steps": 4, "val_every_n_steps": 2, "lr_schedule": "cosine", "warmup_steps": 1,
                         "num_threads": 1, "affine_start_step": 2, "affine_ramp_steps": 1,
                         "monitor": "val/ap50", "lr": 0.001})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    before = torch.get_num_threads()
    try:
        assert main(["train", "--params", str(params),
                     "--pairs", str(tiny_pairs_steps / "data/pairs/manifest.json"),
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
    # two parameter groups (the encoder's, train.encoder_lr_factor): Lightning logs lr-Adam/pg1, /pg2
    lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr-Adam/pg1"), key=lambda m: m.step)]
    encoder_lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr-Adam/pg2"), key=lambda m: m.step)]
    assert encoder_lrs == pytest.approx([lr * cfg["train"].get("encoder_lr_factor", 1.0) for lr in lrs])
    assert len(lrs) == 4 and lrs[0] == pytest.approx(0.001 * 0.01) and lrs[1] == pytest.approx(0.001)
    assert lrs[3] < lrs[2] < lrs[1]
    assert math.isfinite(summary["best_val_loss"])


def test_same_params_same_model_bytes(tiny_pairs_steps, tmp_path):
    """Bit-for-bit: the same params (curriculum, schedule, one loader worker) give the same cyws.pt."""
    cfg = yaml.safe_load((tiny_pairs_steps / "params.yaml").read_text())
    cfg["train"].update({"max_steps": 3, "val_every_n_steps": 3, "lr_schedule": "cosine", "warmup_steps": 1,
                         "num_threads": 1, "affine_start_step": 1, "affine_ramp_steps": 1, "num_workers": 1})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(cfg))
    # Each run in a fresh process, as DVC runs the stage: a loader worker forked from the test process
    # (with the threads earlier tests left running) is not what the pipeline does.
    for run in ("one", "two"):
        argv = ["train", "--params", str(params),
                "--pairs", str(tiny_pairs_steps / "data/pairs/manifest.json"),
                "--out", str(tmp_path / run), "--no-tracking"]
        done = subprocess.run([sys.executable, "-c", f"from spotdiff.cli import main; raise SystemExit(main({argv!r}))"],
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "one" / "cyws.pt").read_bytes() == (tmp_path / "two" / "cyws.pt").read_bytes()
