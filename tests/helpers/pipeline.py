"""A tiny real pipeline up to the pairs manifest, made by the project's own stages (data → inpaint →
pairs) for the training tests, and the two tiny recipes they train with."""

from __future__ import annotations

from pathlib import Path

import yaml

# Both recipes spell out the paper's model settings and an epoch-based fp32 recipe: the built-in
# defaults are params.yaml's embedded recipe (quarter decoder widths, sqrt_d, a 1 200-step bf16 budget).

# The train stage's recipe: two epochs, previews drawn.
TINY_EPOCHS = {
    "data": {"num_images": 8, "image_width": 128, "image_height": 96, "min_objects": 2, "max_objects": 3},
    "inpaint": {"max_versions": 2},
    "pairs": {"val_fraction": 0.25, "pairs_per_image": 1, "preview_count": 2},
    "model": {"backbone": "resnet18", "pretrained_weights": "", "image_size": 64, "attention_scale": "none",
              "decoder_channels": [256, 256, 128, 128, 64]},
    "train": {"batch_size": 4, "max_epochs": 2, "log_every_n_steps": 1, "preview_pairs": 2, "lr": 0.0001,
              "max_steps": -1, "lr_schedule": "constant", "warmup_steps": 0, "val_every_n_steps": 0,
              "monitor": "val/loss", "precision": "32-true", "affine_start_step": 0, "affine_ramp_steps": 0,
              "num_workers": 0},
}

# The CPU-training tests' base (issue F7), which each test changes: no pairs preview, one preview pair,
# max_epochs left at its default.
TINY_STEPS = {
    "data": {"num_images": 8, "image_width": 128, "image_height": 96, "min_objects": 2, "max_objects": 3},
    "inpaint": {"max_versions": 2},
    "pairs": {"val_fraction": 0.25, "pairs_per_image": 1, "preview_count": 0},
    "model": {"backbone": "resnet18", "pretrained_weights": "", "image_size": 64, "attention_scale": "none",
              "decoder_channels": [256, 256, 128, 128, 64]},
    "train": {"batch_size": 4, "log_every_n_steps": 1, "preview_pairs": 1, "lr": 0.0001, "max_steps": -1,
              "lr_schedule": "constant", "warmup_steps": 0, "val_every_n_steps": 0, "monitor": "val/loss",
              "precision": "32-true", "affine_start_step": 0, "affine_ramp_steps": 0,
              "num_workers": 0},
}


def build_tiny_pipeline(root: Path, params: dict) -> Path:
    """`root/params.yaml` = `params`, then the data, inpaint and pairs stages through the CLI:
    `root/data/{source,inpainted,pairs}` (the manifest: `root/data/pairs/manifest.json`). Returns root."""
    from spotdiff.cli import main

    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    for args in (["data", "--out", str(root / "data/source")],
                 ["inpaint", "--source", str(root / "data/source"), "--out", str(root / "data/inpainted")],
                 ["pairs", "--inpainted", str(root / "data/inpainted"), "--out", str(root / "data/pairs")]):
        assert main([args[0], "--params", str(path), *args[1:]]) == 0, args
    return root
