"""Typed view of `params.yaml`: the one place that knows its keys, their types and their bounds.

Every stage reads its own section through `load_params()`; a wrong type, an out-of-range value, an
unknown choice or an unknown key raises `SpotdiffError` naming the key and the fix.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from spotdiff.errors import SpotdiffError

DEFAULT_PARAMS_PATH = Path("params.yaml")


def _check(cond: bool, key: str, rule: str, value: Any) -> None:
    if not cond:
        raise SpotdiffError(f"params.yaml: {key} must be {rule} (got {value!r}); fix the value and rerun")


# ---------------------------------------------------------------- sections


@dataclass(frozen=True)
class CocoSourceParams:
    """Where and how to fetch COCO 2017, and which images to keep (the paper used 60 000)."""

    base_url: str = "http://images.cocodataset.org"
    images_zip: str = "zips/train2017.zip"
    annotations_zip: str = "annotations/annotations_trainval2017.zip"
    annotations_member: str = "annotations/instances_train2017.json"
    # Published sizes / md5s; empty string = not checked (e.g. for a local mirror).
    images_md5: str = "cced6f7f71b7629ddf16f17bbcfab6b2"
    annotations_md5: str = "f4bbac642086de4f52a3fdda2de5fa2c"
    download_dir: str = "data/downloads"
    max_images: int = 60000
    min_object_area: float = 0.0
    max_object_area_fraction: float = 1.0
    min_objects_per_image: int = 1
    max_objects_per_image: int = 20

    def validate(self, key: str) -> None:
        _check(self.max_images > 0, f"{key}.max_images", "> 0", self.max_images)
        _check(self.min_object_area >= 0, f"{key}.min_object_area", ">= 0", self.min_object_area)
        _check(0 < self.max_object_area_fraction <= 1, f"{key}.max_object_area_fraction", "in (0, 1]",
               self.max_object_area_fraction)
        _check(self.min_objects_per_image >= 1, f"{key}.min_objects_per_image", ">= 1",
               self.min_objects_per_image)
        _check(self.max_objects_per_image >= self.min_objects_per_image, f"{key}.max_objects_per_image",
               ">= min_objects_per_image", self.max_objects_per_image)


@dataclass(frozen=True)
class DataParams:
    """`data` stage: the COCO-format instance dataset everything else is built from."""

    source: Literal["embedded", "coco2017"] = "embedded"
    seed: int = 0
    num_images: int = 48
    image_width: int = 320
    image_height: int = 256
    min_objects: int = 2
    max_objects: int = 5
    coco: CocoSourceParams = field(default_factory=CocoSourceParams)

    def validate(self, key: str) -> None:
        _check(self.num_images > 0, f"{key}.num_images", "> 0", self.num_images)
        _check(self.image_width >= 64, f"{key}.image_width", ">= 64", self.image_width)
        _check(self.image_height >= 64, f"{key}.image_height", ">= 64", self.image_height)
        _check(self.min_objects >= 1, f"{key}.min_objects", ">= 1", self.min_objects)
        _check(self.max_objects >= self.min_objects, f"{key}.max_objects", ">= min_objects",
               self.max_objects)
        self.coco.validate(f"{key}.coco")


@dataclass(frozen=True)
class InpaintParams:
    """`inpaint` stage: n in [1, max_versions] inpainted versions per image, each removing a subset."""

    backend: Literal["opencv", "lama"] = "opencv"
    seed: int = 0
    max_versions: int = 3
    dilate_px: int = 5
    opencv_method: Literal["telea", "ns"] = "telea"
    opencv_radius: int = 5
    lama_checkpoint: str = "models/big-lama.pt"
    batch_size: int = 4
    device: Literal["auto", "cpu", "cuda"] = "auto"

    def validate(self, key: str) -> None:
        _check(1 <= self.max_versions <= 8, f"{key}.max_versions", "in [1, 8]", self.max_versions)
        _check(self.dilate_px >= 0, f"{key}.dilate_px", ">= 0", self.dilate_px)
        _check(self.opencv_radius >= 1, f"{key}.opencv_radius", ">= 1", self.opencv_radius)
        _check(self.batch_size >= 1, f"{key}.batch_size", ">= 1", self.batch_size)


@dataclass(frozen=True)
class AugmentParams:
    """Per-image augmentation applied before the resize (paper: jitter 0.1, affine ±30°, ±0.2, 0.8–1.5)."""

    enabled: bool = True
    jitter: float = 0.1
    rotation_deg: float = 30.0
    translate: float = 0.2
    scale_min: float = 0.8
    scale_max: float = 1.5
    max_resample: int = 20
    # Augment at this multiple of the model's input side (the source's long side brought down to
    # work_scale × S first, never up); 0 = at the source's own resolution. The boxes are still the
    # tight boxes of the warped masks, at a resolution finer than the model's input.
    work_scale: float = 2.0

    def validate(self, key: str) -> None:
        _check(self.work_scale == 0 or self.work_scale >= 1, f"{key}.work_scale", "0 (off) or >= 1",
               self.work_scale)
        _check(0 <= self.jitter <= 0.5, f"{key}.jitter", "in [0, 0.5]", self.jitter)
        _check(0 <= self.rotation_deg <= 180, f"{key}.rotation_deg", "in [0, 180]", self.rotation_deg)
        _check(0 <= self.translate < 1, f"{key}.translate", "in [0, 1)", self.translate)
        _check(0 < self.scale_min <= self.scale_max, f"{key}.scale_min", "> 0 and <= scale_max",
               self.scale_min)
        _check(self.max_resample >= 1, f"{key}.max_resample", ">= 1", self.max_resample)


@dataclass(frozen=True)
class PairsParams:
    """`pairs` stage: the manifest of training / validation pairs."""

    seed: int = 0
    p_inpainted: float = 0.5
    val_fraction: float = 0.05
    pairs_per_image: int = 2
    preview_count: int = 8
    augment: AugmentParams = field(default_factory=AugmentParams)

    def validate(self, key: str) -> None:
        _check(0 <= self.p_inpainted <= 1, f"{key}.p_inpainted", "in [0, 1]", self.p_inpainted)
        _check(0 < self.val_fraction < 1, f"{key}.val_fraction", "in (0, 1)", self.val_fraction)
        _check(self.pairs_per_image >= 1, f"{key}.pairs_per_image", ">= 1", self.pairs_per_image)
        _check(self.preview_count >= 0, f"{key}.preview_count", ">= 0", self.preview_count)
        self.augment.validate(f"{key}.augment")


@dataclass(frozen=True)
class ModelParams:
    """The CYWS network (DESIGN §2)."""

    backbone: Literal["resnet50", "resnet18"] = "resnet18"
    attention: Literal["coam", "noam"] = "coam"
    attention_layers: int = 3
    scse: bool = True
    image_size: int = 128
    # Local ImageNet weights (a torchvision state_dict file). Empty = random init; never downloaded.
    pretrained_weights: str = ""
    max_boxes: int = 100
    # Co-attention logit scale: "none" (the reference, needed for its published weights) or "sqrt_d"
    # (1/sqrt(key width): rows do not saturate from random init).
    attention_scale: Literal["none", "sqrt_d"] = "none"
    # How the CoAM key conv starts: "independent" (the reference) or "matching" (a copy of the query
    # conv, so attention starts on corresponding positions; see models/coattention.py).
    attention_init: Literal["independent", "matching"] = "independent"
    # U-Net decoder widths, deepest block first; the head's hidden width is the last one. The
    # reference (and its published weights): 256, 256, 128, 128, 64. The decoder and head run at
    # full resolution and take ~90 % of a CPU step at 64 px: half widths make a step 2.2x cheaper.
    decoder_channels: tuple = (256, 256, 128, 128, 64)

    def validate(self, key: str) -> None:
        _check(len(self.decoder_channels) == 5 and all(
            isinstance(c, int) and not isinstance(c, bool) and 1 <= c <= 4096 for c in self.decoder_channels),
            f"{key}.decoder_channels", "5 integers in [1, 4096], deepest block first",
            list(self.decoder_channels))
        _check(1 <= self.attention_layers <= 3, f"{key}.attention_layers", "in [1, 3]",
               self.attention_layers)
        _check(self.image_size >= 64 and self.image_size % 32 == 0, f"{key}.image_size",
               "a multiple of 32, >= 64", self.image_size)
        _check(1 <= self.max_boxes <= 1000, f"{key}.max_boxes", "in [1, 1000]", self.max_boxes)


@dataclass(frozen=True)
class TrainParams:
    """`train` stage: optimiser, batch, epochs and the Lightning Trainer settings."""

    seed: int = 0
    lr: float = 1e-4
    weight_decay: float = 5e-4
    batch_size: int = 16
    max_epochs: int = 4
    num_workers: int = 0
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "cpu"
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "32-true"
    log_every_n_steps: int = 5
    preview_pairs: int = 4
    # Step budget: > 0 stops after this many optimiser steps (max_epochs is then ignored); -1 = epochs.
    max_steps: int = -1
    # Learning rate per step: linear warm-up from lr * warmup_start_factor over warmup_steps, then
    # "cosine" decays to lr * min_lr_factor at the last step; "constant" keeps lr (the paper's Adam).
    lr_schedule: Literal["constant", "cosine"] = "constant"
    warmup_steps: int = 0
    warmup_start_factor: float = 0.01
    min_lr_factor: float = 0.01
    # Validate (val/loss, val/ap50) every this many steps; 0 = once per epoch.
    val_every_n_steps: int = 0
    # Which validation result picks the kept model (the paper: lowest val/loss).
    monitor: Literal["val/loss", "val/ap50"] = "val/loss"
    # Intra-op threads of the trainer (torch.set_num_threads); 0 = the physical cores it may use.
    num_threads: int = 0
    # Geometry curriculum: training pairs keep identity geometry (colour jitter only) for the first
    # affine_start_step steps, then the affine range of pairs.augment grows linearly to full over
    # affine_ramp_steps steps. 0, 0 = full affine from the first step (the paper).
    affine_start_step: int = 0
    affine_ramp_steps: int = 0

    def validate(self, key: str) -> None:
        _check(self.lr > 0, f"{key}.lr", "> 0", self.lr)
        _check(self.max_steps == -1 or self.max_steps >= 1, f"{key}.max_steps", "-1 or >= 1", self.max_steps)
        _check(self.warmup_steps >= 0, f"{key}.warmup_steps", ">= 0", self.warmup_steps)
        _check(0 < self.warmup_start_factor <= 1, f"{key}.warmup_start_factor", "in (0, 1]",
               self.warmup_start_factor)
        _check(0 <= self.min_lr_factor <= 1, f"{key}.min_lr_factor", "in [0, 1]", self.min_lr_factor)
        _check(self.val_every_n_steps >= 0, f"{key}.val_every_n_steps", ">= 0", self.val_every_n_steps)
        _check(self.val_every_n_steps == 0 or self.max_steps == -1 or self.max_steps % self.val_every_n_steps == 0,
               f"{key}.max_steps", "a multiple of val_every_n_steps (so the last step is validated)",
               self.max_steps)
        _check(self.num_threads >= 0, f"{key}.num_threads", ">= 0", self.num_threads)
        _check(self.affine_start_step >= 0, f"{key}.affine_start_step", ">= 0", self.affine_start_step)
        _check(self.affine_ramp_steps >= 0, f"{key}.affine_ramp_steps", ">= 0", self.affine_ramp_steps)
        _check(self.weight_decay >= 0, f"{key}.weight_decay", ">= 0", self.weight_decay)
        _check(self.batch_size >= 1, f"{key}.batch_size", ">= 1", self.batch_size)
        _check(self.max_epochs >= 1, f"{key}.max_epochs", ">= 1", self.max_epochs)
        _check(self.num_workers >= 0, f"{key}.num_workers", ">= 0", self.num_workers)
        _check(self.num_nodes >= 1, f"{key}.num_nodes", ">= 1", self.num_nodes)
        _check(self.devices == "auto" or (isinstance(self.devices, int) and self.devices >= 1),
               f"{key}.devices", "'auto' or an integer >= 1", self.devices)
        _check(self.precision in {"32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true"},
               f"{key}.precision", "one of 32-true, 16-mixed, bf16-mixed, bf16-true", self.precision)


@dataclass(frozen=True)
class SsimParams:
    """Pixel-wise method (DESIGN §5). These defaults are the `ssim:` section of params.yaml (a test
    checks it): `spotdiff detect` run outside the repository behaves as inside it."""

    sigma: float = 1.5
    threshold: Any = "otsu"  # "otsu" or a float in (0, 1] on the difference map
    # Regions: "objects" groups the thresholded difference into one box per changed object
    # (hysteresis, proximity gap, overlapping boxes merged); "components" is the plain rule
    # (opening + closing with morph_kernel, one box per connected component).
    grouping: Literal["objects", "components"] = "objects"
    morph_kernel: int = 5  # "components" only
    # "objects": pixels above hysteresis × threshold join a region that has a pixel above threshold.
    # 1.0 (off) by default: below 1 boxes grow into the SSIM window's halo (stand-in COCO AP 0.37 → 0.21 at 0.5).
    hysteresis: float = 1.0
    # "objects": fragments closer than this fraction of the working frame's longer side are one object.
    group_gap: float = 0.012
    # "objects": a region must hold a pixel whose grey level moved by this much (in [0, 1]) or whose
    # mean colour moved past min_threshold; JPEG ringing that SSIM rates as different does not.
    seed_delta: float = 0.15
    # Regions smaller than this fraction of the frame are dropped (a few pixels of a glyph still count).
    min_area_fraction: float = 0.00002
    max_side: int = 1024
    # A working frame whose longer side is above this gets its difference map (SSIM, colour term,
    # regions) on every 2nd pixel, from statistics over every pixel (~3× faster at 1024²; boxes on a
    # 2-px grid). 0 = always every pixel. The torch backend always computes every pixel.
    map_side: int = 512
    # auto: homography from feature matches when they support one, else identity (the choice is in
    # the report); homography: features, then ECC, then identity, each fallback a warning; none.
    align: Literal["none", "homography", "auto"] = "auto"
    # Otsu never goes below this on the difference map (identical or near-identical images box nothing).
    min_threshold: float = 0.3
    # Fit B's colour channels to A's (robust gain + offset): exposure and white balance are not a change.
    normalize: bool = True
    # Local mean colour difference (RMS over R, G, B in [0, 1]) that counts as a full difference; it
    # finds flat and iso-luminant changes SSIM on grey misses. 0 = grey SSIM only.
    colour_scale: float = 0.25

    def validate(self, key: str) -> None:
        _check(self.sigma > 0, f"{key}.sigma", "> 0", self.sigma)
        _check(0 <= self.min_threshold <= 2, f"{key}.min_threshold", "in [0, 2]", self.min_threshold)
        _check(self.threshold == "otsu" or (isinstance(self.threshold, (int, float))
                                            and 0 < float(self.threshold) <= 2),
               f"{key}.threshold", "'otsu' or a number in (0, 2]", self.threshold)
        _check(self.morph_kernel >= 0, f"{key}.morph_kernel", ">= 0", self.morph_kernel)
        _check(0 < self.hysteresis <= 1, f"{key}.hysteresis", "in (0, 1]", self.hysteresis)
        _check(0 <= self.group_gap < 0.5, f"{key}.group_gap", "in [0, 0.5)", self.group_gap)
        _check(0 <= self.seed_delta <= 1, f"{key}.seed_delta", "in [0, 1]", self.seed_delta)
        _check(0 <= self.min_area_fraction < 1, f"{key}.min_area_fraction", "in [0, 1)",
               self.min_area_fraction)
        _check(self.max_side >= 64, f"{key}.max_side", ">= 64", self.max_side)
        _check(self.map_side >= 0, f"{key}.map_side", ">= 0", self.map_side)
        _check(self.colour_scale >= 0, f"{key}.colour_scale", ">= 0", self.colour_scale)


@dataclass(frozen=True)
class TestsetsParams:
    """`testsets` stage: offline stand-ins of the four test sets, or the official ones."""

    source: Literal["standin", "official"] = "standin"
    seed: int = 123
    pairs_per_set: int = 24
    image_size: int = 256
    official_root: str = "data/official"
    # source: official — the folder URL holding SHA512SUMS and the archives (the authors' cyws data page),
    # and which archives to fetch (empty = every file listed in SHA512SUMS). Archives are cached in
    # official_root.
    official_base_url: str = ""
    official_archives: tuple = ()

    def validate(self, key: str) -> None:
        _check(self.pairs_per_set >= 1, f"{key}.pairs_per_set", ">= 1", self.pairs_per_set)
        _check(self.image_size >= 64, f"{key}.image_size", ">= 64", self.image_size)
        _check(all(isinstance(a, str) and a for a in self.official_archives), f"{key}.official_archives",
               "a list of archive file names", list(self.official_archives))
        _check(self.source != "official" or bool(self.official_base_url), f"{key}.official_base_url",
               "set (the URL of the folder holding SHA512SUMS) when source is official",
               self.official_base_url)


@dataclass(frozen=True)
class EvaluateParams:
    """`evaluate` stage: the paper's protocol (VOC AP@0.5, 100 boxes per image, no NMS)."""

    methods: tuple = ("cyws", "ssim")
    iou_threshold: float = 0.5
    max_boxes: int = 100
    batch_size: int = 8
    samples_to_draw: int = 4
    # Boxes drawn per image in eval/samples (after NMS for cyws; the paper's Fig. 4 shows 5).
    draw_top_k: int = 5
    # Worker processes reading test pairs (0 = in the main process).
    num_workers: int = 0
    # How CYWS's forward pass runs (spotdiff.methods.engines): auto = ONNX Runtime on a CPU (same
    # boxes, 2-3x eager at 256², BENCHMARKS.md), eager on a GPU; or eager | onnxruntime | channels_last
    # | compile | bf16.
    engine: str = "auto"

    def validate(self, key: str) -> None:
        _check(self.engine in ("auto", "eager", "onnxruntime", "channels_last", "compile", "bf16"),
               f"{key}.engine", "one of auto, eager, onnxruntime, channels_last, compile, bf16", self.engine)
        _check(len(self.methods) >= 1 and set(self.methods) <= {"cyws", "ssim"}, f"{key}.methods",
               "a non-empty list of cyws, ssim", list(self.methods))
        _check(len(set(self.methods)) == len(self.methods), f"{key}.methods", "without repeats",
               list(self.methods))
        _check(0 < self.iou_threshold < 1, f"{key}.iou_threshold", "in (0, 1)", self.iou_threshold)
        _check(self.max_boxes >= 1, f"{key}.max_boxes", ">= 1", self.max_boxes)
        _check(self.batch_size >= 1, f"{key}.batch_size", ">= 1", self.batch_size)
        _check(self.samples_to_draw >= 0, f"{key}.samples_to_draw", ">= 0", self.samples_to_draw)
        _check(self.draw_top_k >= 1, f"{key}.draw_top_k", ">= 1", self.draw_top_k)
        _check(self.num_workers >= 0, f"{key}.num_workers", ">= 0", self.num_workers)


@dataclass(frozen=True)
class RegisterParams:
    """`register` stage: MLflow registry name and the champion rule."""

    model_name: str = "spotdiff"
    primary_metric: str = "cyws/coco_inpainted/all/ap50"
    promote_margin: float = 0.0
    ap_floor: float = 0.0

    def validate(self, key: str) -> None:
        _check(bool(self.model_name), f"{key}.model_name", "a non-empty name", self.model_name)
        _check(self.promote_margin >= 0, f"{key}.promote_margin", ">= 0", self.promote_margin)
        _check(0 <= self.ap_floor <= 1, f"{key}.ap_floor", "in [0, 1]", self.ap_floor)


@dataclass(frozen=True)
class MlflowParams:
    """Tracking: empty tracking_uri = SQLite at <repo>/mlruns/mlflow.db; env MLFLOW_TRACKING_URI wins."""

    tracking_uri: str = ""
    experiment: str = "spotdiff"
    artifact_location: str = ""

    def validate(self, key: str) -> None:
        _check(bool(self.experiment), f"{key}.experiment", "a non-empty name", self.experiment)


@dataclass(frozen=True)
class Params:
    data: DataParams = field(default_factory=DataParams)
    inpaint: InpaintParams = field(default_factory=InpaintParams)
    pairs: PairsParams = field(default_factory=PairsParams)
    model: ModelParams = field(default_factory=ModelParams)
    train: TrainParams = field(default_factory=TrainParams)
    ssim: SsimParams = field(default_factory=SsimParams)
    testsets: TestsetsParams = field(default_factory=TestsetsParams)
    evaluate: EvaluateParams = field(default_factory=EvaluateParams)
    register: RegisterParams = field(default_factory=RegisterParams)
    mlflow: MlflowParams = field(default_factory=MlflowParams)

    def validate(self) -> None:
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)


# ---------------------------------------------------------------- parsing


def _literal_choices(tp: Any) -> Optional[tuple]:
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SpotdiffError(f"params.yaml: {key} must be a mapping (got {value!r})")
        return _build(tp, value, key)
    choices = _literal_choices(tp)
    if choices is not None:
        _check(value in choices, key, "one of " + ", ".join(map(str, choices)), value)
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, "true or false", value)
        return value
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key, "an integer", value)
        return value
    if tp is float:
        _check(isinstance(value, (int, float)) and not isinstance(value, bool), key, "a number", value)
        return float(value)
    if tp is str:
        _check(isinstance(value, str), key, "a string", value)
        return value
    if tp is tuple:
        _check(isinstance(value, (list, tuple)), key, "a list", value)
        return tuple(value)
    return value  # Any


def _build(cls: type, raw: dict, key: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{key}." if key else ""
        raise SpotdiffError(
            f"params.yaml: unknown key {where}{unknown[0]} (known: {', '.join(sorted(names))}); "
            "fix the spelling or remove it")
    kwargs = {}
    for name, value in raw.items():
        sub = f"{key}.{name}" if key else name
        kwargs[name] = _coerce(value, hints[name], sub)
    return cls(**kwargs)


def params_from_dict(raw: dict) -> Params:
    """Build and validate `Params` from a parsed params.yaml mapping (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise SpotdiffError("params.yaml: the top level must be a mapping of sections")
    params = _build(Params, raw, "")
    params.validate()
    return params


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise SpotdiffError(f"{path}: not valid YAML ({first}); fix the file") from None
    return params_from_dict(raw)


def to_flat_dict(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a params section to {"a.b": value} (for MLflow `log_params`)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(to_flat_dict(value, key + "."))
        else:
            out[key] = value
    return out

