"""Training / validation pairs: how they are drawn into a manifest, and how one pair is loaded.

A pair is built from one source item of a COCO-Inpainted folder:
- `inpainted` (probability `p_inpainted`): two distinct images out of {original, its inpainted
  versions}; the changed objects are the XOR of their removed sets — an object removed in both is
  not a change, and a pair whose XOR is empty is never emitted;
- `pasted`: the original and a copy with all annotated objects of another random item (the donor,
  from the same split) pasted in by mask, after resizing the donor to the recipient's size; which of
  the two comes first is swapped with p=0.5. The paste itself happens at load time
  (`load_pair_source`), deterministically from the manifest entry.

Kinds beyond the paper's recipe (`pairs.text_fraction`, `pairs.parallax_fraction`,
`pairs.relight_fraction`; all 0 = the paper's recipe, drawn from a separate random stream so the
pairs above come out the same whatever these are):
- `text` (text_fraction): one image of the item (the original or an inpainted version) and a copy
  with 1-4 words rendered into it by `spotdiff.data.text` (the Synthtext stand-in's renderer); the
  changes are the words' glyph masks; order swapped with p=0.5;
- `parallax` (parallax_fraction): the item's original as the back plane of a layered 3D scene and a
  donor's objects as cards in front of it (`spotdiff.data.parallax`, the Kubric stand-in's
  renderer), seen from two camera centres; the `changed` donor objects are present in one view
  only, the `static` ones in both. Each image has its own masks (where that view sees the object
  or its place);
- `relight` (relight_fraction, on top of any kind): one of the two images under new local light
  (`spotdiff.data.lighting`: shadows, light pools, haze), which is not a change.
Text and parallax pairs are rendered at load time from the entry's `seed`; word placement depends
on the seed and the image size only, so the manifest knows how many words there will be.

Items are split into train / val by source item (a donor is drawn from its recipient's split), so
no source image appears in both. Every emitted pair has at least one changed object with a
non-empty mask at the source resolution, so augmentation can always fall back to a boxable pair.

`manifest.json`:
    {"format": "spotdiff-pairs/1", "inpainted_root": "<path relative to the manifest's folder>",
     "seed": ..., "splits": {"train": [idx, ...], "val": [...]},
     "pairs": {"train": [entry, ...], "val": [...]}}
    entry (inpainted): {"id", "kind": "inpainted", "idx", "removed_a": [...], "removed_b": [...],
                        "changed": [...]}
    entry (pasted):    {"id", "kind": "pasted", "idx", "donor", "swap": bool,
                        "changed": [donor annotation ids]}
    entry (text):      {"id", "kind": "text", "idx", "base": [removed ids of the image written on],
                        "seed", "words": words tried, "swap": bool, "changed": [words placed, 0..K-1]}
    entry (parallax):  {"id", "kind": "parallax", "idx", "donor", "seed",
                        "changed": [donor annotation ids], "static": [donor annotation ids]}
    any entry may add  "relight": seed  (one image relit; which one is drawn from the seed)

`load_pair_source` returns the changed objects' masks as one K×H×W array in the pair's shared frame,
or, for parallax pairs, a (masks_a, masks_b) tuple: each image's own K×H×W masks.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from spotdiff.data.coco_inpainted import CocoInpainted, changed_ids, resize_to
from spotdiff.data.lighting import relight
from spotdiff.data.parallax import DEPTH_RANGE, Card, Scene, random_back_plane, render_change_pair
from spotdiff.data.text import render_words
from spotdiff.errors import SpotdiffError
from spotdiff.params import PairsParams

MANIFEST = "manifest.json"
PREVIEW = "preview.png"
FORMAT = "spotdiff-pairs/1"


# ---------------------------------------------------------------- loading one pair


def resized_masks(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """K×h×w bool masks resized (nearest) to K×height×width."""
    import cv2

    if masks.shape[1:] == (height, width):
        return masks
    out = np.zeros((masks.shape[0], height, width), dtype=bool)
    for k, m in enumerate(masks):
        out[k] = cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST) > 0
    return out


def paste_objects(recipient: np.ndarray, donor: np.ndarray,
                  donor_masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Paste all donor objects into the recipient by mask (donor resized to the recipient's size).

    Returns (pasted image, K×H×W masks of the pasted objects in the recipient's frame).
    """
    h, w = recipient.shape[:2]
    donor = resize_to(donor, h, w)
    masks = resized_masks(donor_masks, h, w)
    pasted = recipient.copy()
    union = masks.any(axis=0) if masks.shape[0] else np.zeros((h, w), dtype=bool)
    pasted[union] = donor[union]
    return pasted, masks


Masks = np.ndarray | tuple[np.ndarray, np.ndarray]  # shared frame K×H×W, or each image's own


def load_pair_source(entry: dict, dataset: CocoInpainted) -> tuple[np.ndarray, np.ndarray, Masks]:
    """The two images (H×W×3 uint8, same size) and the masks of the changed objects of an entry: one
    K×H×W array in the shared frame, or (masks_a, masks_b) for a parallax pair."""
    image_a, image_b, masks = _load_kind(entry, dataset)
    if entry.get("relight") is not None:
        rng = np.random.default_rng([int(entry["relight"]), 4])
        if rng.random() < 0.5:
            image_a = relight(rng, image_a)
        else:
            image_b = relight(rng, image_b)
    return image_a, image_b, masks


def _load_kind(entry: dict, dataset: CocoInpainted) -> tuple[np.ndarray, np.ndarray, Masks]:
    idx = int(entry["idx"])
    changed = [int(k) for k in entry["changed"]]
    if entry["kind"] == "inpainted":
        image_a = dataset.load_removed(idx, entry["removed_a"])
        image_b = dataset.load_removed(idx, entry["removed_b"])
        masks = dataset.annotation_masks(idx, *image_a.shape[:2])[changed]
        return image_a, image_b, masks
    if entry["kind"] == "pasted":
        original = dataset.load_original(idx)
        donor = int(entry["donor"])
        donor_masks = dataset.annotation_masks(donor)[changed]
        pasted, masks = paste_objects(original, dataset.load_original(donor), donor_masks)
        if entry.get("swap"):
            return pasted, original, masks
        return original, pasted, masks
    if entry["kind"] == "text":
        base = dataset.load_removed(idx, entry["base"])
        written = base.copy()
        _, words = render_words(np.random.default_rng([int(entry["seed"]), 5]), written,
                                int(entry["words"]))
        if entry.get("swap"):
            return written, base, words
        return base, written, words
    if entry["kind"] == "parallax":
        return parallax_pair(dataset, idx, int(entry["donor"]), changed, [int(k) for k in entry["static"]],
                             int(entry["seed"]))
    raise SpotdiffError(f"manifest entry {entry.get('id')}: unknown kind {entry['kind']!r}; "
                        "rerun `spotdiff pairs`")


def parallax_pair(dataset: CocoInpainted, idx: int, donor: int, changed: list[int], static: list[int],
                  seed: int) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Two views of the item's original (back plane) with the donor's objects as cards in front:
    `changed` ones in one view only, `static` ones in both (module docstring)."""
    rng = np.random.default_rng([seed, 6])
    floor = dataset.load_original(idx)
    h, w = floor.shape[:2]
    donor_image = resize_to(dataset.load_original(donor), h, w)
    all_masks = resized_masks(dataset.annotation_masks(donor), h, w)
    normal, distance = random_back_plane(rng)
    cards = [Card(donor_image, all_masks[k], float(rng.uniform(*DEPTH_RANGE))) for k in static]
    for k in changed:
        view = int(rng.integers(0, 2))
        cards.append(Card(donor_image, all_masks[k], float(rng.uniform(*DEPTH_RANGE)), (view == 0, view == 1)))
    images, masks, _ = render_change_pair(rng, Scene(floor, normal, distance, cards), min_pixels=16)
    return images[0], images[1], (np.asarray(masks[0], bool).reshape(-1, h, w),
                                  np.asarray(masks[1], bool).reshape(-1, h, w))


def read_manifest(path: str | Path) -> tuple[dict, CocoInpainted]:
    """The manifest dict and a reader of the COCO-Inpainted folder it points to."""
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: pairs manifest not found; run `spotdiff pairs` first")
    try:
        manifest = json.loads(path.read_text())
    except ValueError as exc:
        raise SpotdiffError(f"{path}: not valid JSON ({exc}); rerun `spotdiff pairs`") from None
    if manifest.get("format") != FORMAT:
        raise SpotdiffError(f"{path}: format {manifest.get('format')!r} is not {FORMAT}; "
                            "rerun `spotdiff pairs`")
    root = Path(manifest["inpainted_root"])
    if not root.is_absolute():
        root = path.parent / root
    return manifest, CocoInpainted(root)


# ---------------------------------------------------------------- building the manifest


def split_items(indices: list[int], val_fraction: float,
                rng: np.random.Generator) -> tuple[list[int], list[int]]:
    """Split source items into (train, val): at least one of each, by whole item."""
    if len(indices) < 2:
        raise SpotdiffError(f"the inpainted set has {len(indices)} item(s); a train/val split needs at "
                            "least 2 — generate more images (data.num_images)")
    order = [indices[i] for i in rng.permutation(len(indices))]
    n_val = min(max(1, int(round(val_fraction * len(indices)))), len(indices) - 1)
    return sorted(order[n_val:]), sorted(order[:n_val])


def inpainted_candidates(removed_sets: list[frozenset],
                         nonempty: set[int]) -> list[tuple[int, int, frozenset]]:
    """Ordered pairs (i, j) of distinct images whose XOR contains at least one boxable object."""
    out = []
    for i, j in itertools.permutations(range(len(removed_sets)), 2):
        changed = changed_ids(removed_sets[i], removed_sets[j]) & nonempty
        if changed:
            out.append((i, j, changed))
    return out


class _ItemInfo:
    """What the builder needs of one item: its size, removed sets and which objects have non-empty masks."""

    def __init__(self, dataset: CocoInpainted, idx: int):
        self.idx = idx
        self.dataset = dataset
        self.height, self.width = dataset.image_size(idx)
        masks = dataset.annotation_masks(idx, self.height, self.width)
        self.nonempty = {k for k in range(masks.shape[0]) if masks[k].any()}
        self.removed_sets = [frozenset()] + [v.removed for v in dataset.versions(idx)]

    def visible_at(self, height: int, width: int) -> list[int]:
        """Objects whose mask is still non-empty when resized to height×width (as pasted)."""
        masks = resized_masks(self.dataset.annotation_masks(self.idx, self.height, self.width), height, width)
        return [k for k in sorted(self.nonempty) if masks[k].any()]


def build_manifest(params: PairsParams, inpainted: str | Path, manifest_dir: str | Path) -> dict:
    """Draw the train/val pairs of a COCO-Inpainted folder (deterministic given params.seed)."""
    inpainted, manifest_dir = Path(inpainted), Path(manifest_dir)
    dataset = CocoInpainted(inpainted)
    rng = np.random.default_rng([params.seed, 0])
    train, val = split_items(dataset.indices, params.val_fraction, rng)
    infos = {idx: _ItemInfo(dataset, idx)
             for idx in tqdm(dataset.indices, desc="pairs: reading items", unit="item")}
    pairs: dict[str, list] = {"train": [], "val": []}
    skipped = 0
    for split, items in (("train", train), ("val", val)):
        for idx in tqdm(items, desc=f"pairs: {split}", unit="item"):
            info = infos[idx]
            item_rng = np.random.default_rng([params.seed, 1, idx])
            kind_rng = np.random.default_rng([params.seed, 3, idx])  # the kinds beyond the paper's
            candidates = inpainted_candidates(info.removed_sets, info.nonempty)
            donors = [d for d in items if d != idx and infos[d].nonempty]
            for k in range(params.pairs_per_image):
                entry = _draw_extra_kind(params, info, infos, donors, kind_rng)
                if entry is None:
                    entry = _draw_pair(params, info, infos, candidates, donors, item_rng)
                if entry is not None and params.relight_fraction > 0 and kind_rng.random() < params.relight_fraction:
                    entry["relight"] = int(kind_rng.integers(0, 2**31))
                if entry is None:
                    skipped += 1
                    continue
                entry = {"id": f"{split}-{idx}-{k}", **entry}
                pairs[split].append(entry)
    if not pairs["train"] or not pairs["val"]:
        raise SpotdiffError(f"{inpainted}: no {'train' if not pairs['train'] else 'val'} pair could be made "
                            "(no item has a changed object with a non-empty mask); check the inpainted set")
    try:
        root = os.path.relpath(inpainted.resolve(), manifest_dir.resolve())
    except ValueError:  # different drives
        root = str(inpainted.resolve())
    return {"format": FORMAT, "inpainted_root": root, "seed": params.seed,
            "params": params.model_dump(exclude={"augment"}),
            "counts": {"train": len(pairs["train"]), "val": len(pairs["val"]), "skipped": skipped},
            "splits": {"train": train, "val": val}, "pairs": pairs}


def _draw_pair(params: PairsParams, info: _ItemInfo, infos: dict, candidates: list, donors: list,
               rng: np.random.Generator) -> dict[str, Any] | None:
    use_inpainted = rng.random() < params.p_inpainted
    if use_inpainted and not candidates:
        use_inpainted = False
    if not use_inpainted:
        for donor in _shuffled(donors, rng):
            changed = infos[donor].visible_at(info.height, info.width)
            if changed:
                return {"kind": "pasted", "idx": info.idx, "donor": int(donor),
                        "swap": bool(rng.random() < 0.5), "changed": changed}
        if not candidates:
            return None
    i, j, changed = candidates[int(rng.integers(len(candidates)))]
    return {"kind": "inpainted", "idx": info.idx, "removed_a": sorted(info.removed_sets[i]),
            "removed_b": sorted(info.removed_sets[j]), "changed": sorted(changed)}


def _draw_extra_kind(params: PairsParams, info: _ItemInfo, infos: dict, donors: list,
                     rng: np.random.Generator) -> dict[str, Any] | None:
    """A text or parallax entry (with probability text_fraction / parallax_fraction), or None: the
    paper's recipe draws this pair."""
    if params.text_fraction + params.parallax_fraction <= 0:
        return None
    u = rng.random()
    seed = int(rng.integers(0, 2**31))
    if u < params.text_fraction:
        n_words = int(rng.integers(1, 5))
        canvas = np.zeros((info.height, info.width, 3), np.uint8)  # placement ignores the pixels
        _, words = render_words(np.random.default_rng([seed, 5]), canvas, n_words)
        if not len(words) or not words.any(axis=(1, 2)).all():
            return None
        base = info.removed_sets[int(rng.integers(len(info.removed_sets)))]
        return {"kind": "text", "idx": info.idx, "base": sorted(base), "seed": seed,
                "words": n_words, "swap": bool(rng.random() < 0.5), "changed": list(range(len(words)))}
    if u < params.text_fraction + params.parallax_fraction:
        for donor in _shuffled(donors, rng):
            visible = infos[donor].visible_at(info.height, info.width)
            if visible:
                changed = [k for k in visible if rng.random() < 0.6] or [visible[int(rng.integers(len(visible)))]]
                static = [k for k in visible if k not in changed]
                return {"kind": "parallax", "idx": info.idx, "donor": int(donor), "seed": seed,
                        "changed": changed, "static": static}
    return None


def _shuffled(items: list, rng: np.random.Generator, limit: int = 8) -> list:
    """Up to `limit` items in random order (enough tries to find a donor with a visible object)."""
    if not items:
        return []
    picks = rng.permutation(len(items))[:limit]
    return [items[i] for i in picks]
