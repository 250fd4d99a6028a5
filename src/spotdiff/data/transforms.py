"""Exact, replayable training augmentation of an image pair, with kornia.

Each image of a pair gets its own colour jitter (brightness, contrast, saturation, hue) and random
affine (rotation, translation, scale; border padding), at its own resolution, before the resize to
the model's S×S input. The boxes follow the objects exactly:

1. every changed object's MASK (in the pair's shared source frame) is warped with the very same
   kornia `warp_affine` call and flags as the image, with nearest sampling;
2. in image a, only the pixels that image b also shows are kept: a's warped mask is intersected
   with the part of a's frame that maps inside b's frame (the frame of b brought into a by
   T_a·T_b⁻¹), and the same the other way round — an object removed in one image counts where the
   other image shows it, and a change that leaves either frame is not a change;
3. each image's box is the tight box of its own remaining mask (`spotdiff.boxes.mask_to_box`), at
   the image's resolution, then scaled to S (exact float scaling, no second rasterisation);
   A pair whose images are not of one frame (parallax pairs: `spotdiff.data.pairs`) gives each
   image its own masks, `(masks_a, masks_b)`; each is warped with its own image's matrix, and an
   object is kept when both images still show part of it (the frames' overlap is not computed:
   no homography relates them);
4. a pair where no changed object is left is resampled with new parameters, up to
   `max_resample` times, and then falls back to the identity (no augmentation) — never dropped.

Parameters are kornia's own `RandomAffine` / `ColorJitter` parameter dicts (plain tensors), drawn
by kornia under a torch RNG seeded from a numpy Generator, so they are deterministic given the
seed, can be `torch.save`d as `{"aff": ..., "jit": ...}` (the published test-augmentation format)
and replayed with `augment_pair(..., params=(params_a, params_b))`.

Geometry strength (the training curriculum, `train.affine_start_step` / `affine_ramp_steps`): with
`strength` s in [0, 1] the sampled rotation and translation are multiplied by s and the scale moved
towards 1 (1 + s·(scale − 1)) — the same distribution as kornia's over a range shrunk by s, so s = 0
is identity geometry (colour jitter only) and s = 1 the configured affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from spotdiff import boxes as box_fmt
from spotdiff.params import AugmentParams

ImageParams = dict  # {"aff": {name: tensor}, "jit": {name: tensor}}; None values = identity


@dataclass
class AugmentedPair:
    """Both images at S×S (3×S×S float in [0,1]), their boxes (N×4 float32, xyxy at S) and the params."""

    image_a: torch.Tensor
    image_b: torch.Tensor
    boxes_a: torch.Tensor
    boxes_b: torch.Tensor
    params_a: ImageParams
    params_b: ImageParams
    attempts: int  # parameter draws used (1 = first draw kept; max_resample + 1 = identity fallback)
    kept_objects: list  # indices of the changed objects that are boxed


def image_to_tensor(image: np.ndarray) -> torch.Tensor:
    """H×W×3 uint8 RGB -> 1×3×H×W float32 in [0,1]."""
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float().div_(255)


def identity_params(height: int, width: int) -> ImageParams:
    """Parameters that leave an image unchanged (same keys and shapes as sampled ones)."""
    shape = torch.tensor([1, 3, height, width])
    aff = {"translations": torch.zeros(1, 2), "center": torch.tensor([[(width - 1) / 2, (height - 1) / 2]]),
           "scale": torch.ones(1, 2), "angle": torch.zeros(1), "shear_x": torch.zeros(1),
           "shear_y": torch.zeros(1), "batch_prob": torch.ones(1), "forward_input_shape": shape}
    jit = {"brightness_factor": torch.ones(1), "contrast_factor": torch.ones(1),
           "hue_factor": torch.zeros(1), "saturation_factor": torch.ones(1),
           "order": torch.arange(4), "batch_prob": torch.ones(1), "forward_input_shape": shape}
    return {"aff": aff, "jit": jit}


class PairAugmenter:
    """Samples and applies per-image kornia ColorJitter + RandomAffine; boxes the visible changes."""

    def __init__(self, params: AugmentParams, image_size: int):
        import kornia.augmentation as K

        self.params = params
        self.image_size = int(image_size)
        self.affine = K.RandomAffine(degrees=params.rotation_deg,
                                     translate=(params.translate, params.translate),
                                     scale=(params.scale_min, params.scale_max), padding_mode="border", p=1.0)
        j = params.jitter
        self.jitter = K.ColorJitter(j, j, j, j, p=1.0)

    # ---------------------------------------------------------- parameters

    def sample_params(self, height: int, width: int, rng: np.random.Generator,
                      strength: float = 1.0) -> ImageParams:
        """Draw one image's parameters with kornia's own distributions, deterministically from `rng`.

        `strength` in [0, 1] shrinks the affine part towards the identity (module docstring).
        """
        if not self.params.enabled:
            return identity_params(height, width)
        shape = torch.Size([1, 3, height, width])
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only: `torch.manual_seed` also seeds every lazy accelerator module,
            # each of which records a Python traceback per call (~35 ms per training step here).
            torch.default_generator.manual_seed(int(rng.integers(0, 2**63 - 1)))
            aff = dict(self.affine.forward_parameters(shape))
            jit = self.jitter.forward_parameters(shape)
        if strength < 1.0:
            s = max(0.0, float(strength))
            aff["angle"] = aff["angle"] * s
            aff["translations"] = aff["translations"] * s
            aff["scale"] = 1 + (aff["scale"] - 1) * s
        return {"aff": aff, "jit": dict(jit)}

    def matrix(self, params: ImageParams, image: torch.Tensor) -> torch.Tensor:
        """The 1×3×3 pixel-space matrix kornia applies for these affine params."""
        return self.affine.compute_transformation(image, params["aff"], self.affine.flags)

    # ---------------------------------------------------------- application

    def _warp(self, x: torch.Tensor, m: torch.Tensor, mode: str, padding: str) -> torch.Tensor:
        from kornia.geometry.transform import warp_affine

        flags = self.affine.flags
        return warp_affine(x, m[:, :2, :], tuple(x.shape[-2:]), mode, padding_mode=padding,
                           align_corners=flags["align_corners"])

    def apply_image(self, image: torch.Tensor, params: ImageParams) -> tuple[torch.Tensor, torch.Tensor]:
        """Jitter then warp a 1×3×H×W image exactly as kornia would; returns (image, matrix)."""
        m = self.matrix(params, image)
        out = self.jitter(image, params=params["jit"])
        out = self._warp(out, m, "bilinear", self.affine.flags["padding_mode"].name.lower())
        return out.clamp_(0, 1), m

    def warp_masks(self, masks: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Warp K×H×W bool masks with the same call as the image (nearest, zero outside the source)."""
        if masks.shape[0] == 0:
            return masks.bool()
        out = self._warp(masks.float()[:, None], m.expand(masks.shape[0], 3, 3), "nearest", "zeros")
        return out[:, 0] > 0.5

    def _resize(self, image: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        if tuple(image.shape[-2:]) == (s, s):
            return image
        return F.interpolate(image, size=(s, s), mode="bilinear", align_corners=False,
                             antialias=True).clamp_(0, 1)

    def _try(self, tensor_a, tensor_b, masks, params_a, params_b):
        h, w = tensor_a.shape[-2:]
        img_a, m_a = self.apply_image(tensor_a, params_a)
        img_b, m_b = self.apply_image(tensor_b, params_b)
        if isinstance(masks, tuple):  # each image's own masks (no shared frame)
            masks_a = self.warp_masks(masks[0], m_a)
            masks_b = self.warp_masks(masks[1], m_b)
            masks = masks[0]
        else:
            ones = torch.ones(1, h, w, dtype=torch.bool)
            # Where each frame sees what the other frame shows: b's frame brought into a, and back.
            b_in_a = self.warp_masks(ones, m_a @ torch.linalg.inv(m_b))[0]
            a_in_b = self.warp_masks(ones, m_b @ torch.linalg.inv(m_a))[0]
            masks_a = self.warp_masks(masks, m_a) & b_in_a
            masks_b = self.warp_masks(masks, m_b) & a_in_b
        boxes_a, boxes_b, kept = [], [], []
        for k in range(masks.shape[0]):
            box_a = box_fmt.mask_to_box(masks_a[k].numpy())
            box_b = box_fmt.mask_to_box(masks_b[k].numpy())
            if box_a is not None and box_b is not None:
                boxes_a.append(box_a)
                boxes_b.append(box_b)
                kept.append(k)
        return img_a, img_b, boxes_a, boxes_b, kept

    def __call__(self, image_a: np.ndarray, image_b: np.ndarray, changed_masks: np.ndarray,
                 rng: Optional[np.random.Generator] = None,
                 params: Optional[tuple[ImageParams, ImageParams]] = None,
                 strength: float = 1.0) -> AugmentedPair:
        """Augment a pair sharing one source frame.

        image_a, image_b: H×W×3 uint8 RGB (same size); changed_masks: K×H×W bool, the changed objects
        in the shared frame, or a (masks_a, masks_b) tuple of each image's own K×H×W masks. Either
        `rng` (sample, resampling when nothing stays visible; `strength`
        scales the affine part) or `params` (replay exactly those; identity when they leave nothing
        visible).
        """
        if image_a.shape != image_b.shape:
            raise ValueError(f"pair images differ in size: {image_a.shape} vs {image_b.shape}")
        h, w = image_a.shape[:2]

        def as_tensor(m):
            return torch.from_numpy(np.ascontiguousarray(np.asarray(m, dtype=bool).reshape(-1, h, w)))

        if isinstance(changed_masks, tuple):
            masks = (as_tensor(changed_masks[0]), as_tensor(changed_masks[1]))
            if masks[0].shape != masks[1].shape:
                raise ValueError(f"per-image masks differ in shape: {tuple(masks[0].shape)} vs "
                                 f"{tuple(masks[1].shape)}")
        else:
            masks = as_tensor(changed_masks)
        tensor_a, tensor_b = image_to_tensor(image_a), image_to_tensor(image_b)
        if params is not None:
            draws = [params]
        elif rng is not None:
            draws = (  # generator: parameters are only drawn when needed
                (self.sample_params(h, w, rng, strength), self.sample_params(h, w, rng, strength))
                for _ in range(self.params.max_resample))
        else:
            raise ValueError("give rng (to sample) or params (to replay)")
        attempts = 0
        for params_a, params_b in draws:
            attempts += 1
            img_a, img_b, boxes_a, boxes_b, kept = self._try(tensor_a, tensor_b, masks, params_a, params_b)
            if kept:
                break
        else:
            params_a, params_b = identity_params(h, w), identity_params(h, w)
            attempts += 1
            img_a, img_b, boxes_a, boxes_b, kept = self._try(tensor_a, tensor_b, masks, params_a, params_b)
        sx, sy = self.image_size / w, self.image_size / h
        return AugmentedPair(
            image_a=self._resize(img_a)[0], image_b=self._resize(img_b)[0],
            boxes_a=box_fmt.to_tensor(box_fmt.scale_boxes(np.array(boxes_a).reshape(-1, 4), sx, sy)),
            boxes_b=box_fmt.to_tensor(box_fmt.scale_boxes(np.array(boxes_b).reshape(-1, 4), sx, sy)),
            params_a=params_a, params_b=params_b, attempts=attempts, kept_objects=kept)
