"""`PairDataset`: the training / validation pairs of a `pairs` manifest, augmented, at the model size.

Item: {"image_a": 3×S×S float32 in [0,1], "image_b": 3×S×S, "boxes_a": N×4 float32,
"boxes_b": M×4 float32 (xyxy pixels at S, x2/y2 exclusive), "pair_id": str}. With the exact
augmentation of `spotdiff.data.transforms`, N = M ≥ 1 (box k of a and b is the same object).

Validation items are deterministic: augmentation parameters come from `rng([seed, index])`.
Training items are random per access: the seed also takes a number drawn from torch's global RNG,
which the DataLoader seeds differently in each worker and each epoch (and `seed_everything` makes
reproducible).

Training through `CurriculumSampler` instead: the sampler yields keys `(index, draw, strength)`
where `draw` is the item's position in the whole run (epoch · n + i) and `strength` the affine
strength of the curriculum at the optimiser step that batch belongs to. The item's parameters come
from `rng([seed, index, draw])`, so a run is the same whatever `num_workers` is, and the geometry
follows the step count exactly even when workers prefetch ahead.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

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

    def __getitem__(self, key: int | tuple[int, int, float]) -> dict:
        """`key`: an index, or `(index, draw, strength)` from `CurriculumSampler`."""
        if isinstance(key, (tuple, list)):
            index, draw, strength = int(key[0]), int(key[1]), float(key[2])
            rng = np.random.default_rng([self.seed, index, draw])
        else:
            index, strength = int(key), 1.0
            rng = self._rng(index)
        entry = self.entries[index]
        image_a, image_b, masks = load_pair_source(entry, self.source)
        image_a, image_b, masks = working_resolution(image_a, image_b, masks,
                                                     self.augmenter.params.work_scale * self.image_size)
        pair = self.augmenter(image_a, image_b, masks, rng=rng, strength=strength)
        return {"image_a": pair.image_a.float().contiguous(), "image_b": pair.image_b.float().contiguous(),
                "boxes_a": pair.boxes_a, "boxes_b": pair.boxes_b, "pair_id": str(entry["id"])}


def working_resolution(image_a: np.ndarray, image_b: np.ndarray, masks, long_side: float):
    """The pair brought down (area averaging) so its long side is `long_side`; unchanged when 0 or smaller.

    Masks: a pixel belongs to an object when at least half of its area did; an object that would
    vanish keeps every pixel it touches (a change of a few source pixels is still a change). `masks`
    is one K×H×W array (the shared frame) or a (masks_a, masks_b) tuple (each image's own), and
    comes back in the same form.
    """
    import cv2

    h, w = image_a.shape[:2]
    scale = long_side / max(h, w) if long_side > 0 else 1.0
    if scale >= 1.0:
        return image_a, image_b, masks
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small_a = cv2.resize(image_a, size, interpolation=cv2.INTER_AREA)
    small_b = cv2.resize(image_b, size, interpolation=cv2.INTER_AREA)

    def shrink(masks):
        masks = np.asarray(masks, dtype=bool).reshape(-1, h, w)
        small_masks = np.zeros((masks.shape[0], size[1], size[0]), dtype=bool)
        for k, mask in enumerate(masks):
            cover = cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA)
            small_masks[k] = cover >= 0.5
            if not small_masks[k].any():
                small_masks[k] = cover > 0
        return small_masks

    if isinstance(masks, tuple):
        return small_a, small_b, (shrink(masks[0]), shrink(masks[1]))
    return small_a, small_b, shrink(masks)


def collate_pairs(items: list[dict]) -> dict:
    """Stack the images (B×3×S×S); boxes stay lists of N_i×4 tensors; pair_ids a list of str."""
    return {"image_a": torch.stack([it["image_a"] for it in items]),
            "image_b": torch.stack([it["image_b"] for it in items]),
            "boxes_a": [it["boxes_a"] for it in items],
            "boxes_b": [it["boxes_b"] for it in items],
            "pair_ids": [it["pair_id"] for it in items]}


@dataclass(frozen=True)
class AffineCurriculum:
    """Affine strength per optimiser step: 0 before `start_step`, then a linear ramp to 1 over `ramp_steps`."""

    start_step: int = 0
    ramp_steps: int = 0

    def strength(self, step: int) -> float:
        if step < self.start_step:
            return 0.0
        if self.ramp_steps <= 0:
            return 1.0
        return min(1.0, (step - self.start_step + 1) / self.ramp_steps)


class CurriculumSampler(Sampler):
    """Shuffled training keys `(index, draw, strength)`; one permutation per epoch from `rng([seed, epoch])`.

    Lightning calls `set_epoch` before each epoch; the step of the i-th item of epoch e is
    e · ceil(n / batch_size) + i // batch_size (no dropped last batch), as the Trainer counts it.
    """

    def __init__(self, length: int, batch_size: int, seed: int,
                 curriculum: AffineCurriculum = AffineCurriculum()) -> None:
        self.length, self.batch_size, self.seed = int(length), int(batch_size), int(seed)
        self.curriculum = curriculum
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        epoch = self.epoch
        self.epoch += 1  # a loop that never calls set_epoch still gets a new epoch each pass
        order = np.random.default_rng([self.seed, 7, epoch]).permutation(self.length)
        first_step = epoch * math.ceil(self.length / self.batch_size)
        for i, index in enumerate(order.tolist()):
            step = first_step + i // self.batch_size
            yield index, epoch * self.length + i, self.curriculum.strength(step)
