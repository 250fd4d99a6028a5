"""`PairDataset`: the training / validation pairs of a `pairs` manifest, augmented, at the model size.

Item (CONTRACTS.md): {"image_a": 3×S×S float32 in [0,1], "image_b": 3×S×S, "boxes_a": N×4 float32,
"boxes_b": M×4 float32 (xyxy pixels at S, x2/y2 exclusive), "pair_id": str}. With the exact
augmentation of `spotdiff.data.transforms`, N = M ≥ 1 (box k of a and b is the same object).

Validation items are deterministic: augmentation parameters come from `rng([seed, index])`.
Training items are random per access: the seed also takes a number drawn from torch's global RNG,
which the DataLoader seeds differently in each worker and each epoch (and `seed_everything` makes
reproducible).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from spotdiff.data.pairs import load_pair_source, read_manifest
from spotdiff.data.transforms import PairAugmenter
from spotdiff.errors import SpotdiffError
from spotdiff.params import AugmentParams

SPLITS = ("train", "val")


class PairDataset(Dataset):
    """Pairs of one split of `manifest_path`; `image_size` S is the model's square input side."""

    def __init__(self, manifest_path: str | Path, split: str = "train", image_size: int = 256,
                 augment: AugmentParams | None = None, seed: int = 0, deterministic: bool | None = None):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        self.manifest_path = Path(manifest_path)
        self.manifest, self.source = read_manifest(self.manifest_path)
        self.entries: list[dict] = self.manifest["pairs"][split]
        if not self.entries:
            raise SpotdiffError(f"{self.manifest_path}: the {split} split has no pairs; "
                                "rerun `spotdiff pairs`")
        self.split = split
        self.image_size = int(image_size)
        self.augmenter = PairAugmenter(augment if augment is not None else AugmentParams(), self.image_size)
        self.seed = int(seed)
        self.deterministic = (split == "val") if deterministic is None else bool(deterministic)

    def __len__(self) -> int:
        return len(self.entries)

    def _rng(self, index: int) -> np.random.Generator:
        if self.deterministic:
            return np.random.default_rng([self.seed, index])
        return np.random.default_rng([self.seed, index, int(torch.randint(0, 2**62, ()).item())])

    def __getitem__(self, index: int) -> dict:
        entry = self.entries[index]
        image_a, image_b, masks = load_pair_source(entry, self.source)
        pair = self.augmenter(image_a, image_b, masks, rng=self._rng(index))
        return {"image_a": pair.image_a.float().contiguous(), "image_b": pair.image_b.float().contiguous(),
                "boxes_a": pair.boxes_a, "boxes_b": pair.boxes_b, "pair_id": str(entry["id"])}


def collate_pairs(items: list[dict]) -> dict:
    """Stack the images (B×3×S×S); boxes stay lists of N_i×4 tensors; pair_ids a list of str."""
    return {"image_a": torch.stack([it["image_a"] for it in items]),
            "image_b": torch.stack([it["image_b"] for it in items]),
            "boxes_a": [it["boxes_a"] for it in items],
            "boxes_b": [it["boxes_b"] for it in items],
            "pair_ids": [it["pair_id"] for it in items]}
