"""The CYWS change detector ("The Change You Want To See", Sachdeva & Zisserman 2023).

    image_a, image_b ──► shared encoder (ResNet, MobileNetV2, EfficientNet-Lite0) ──► 5 maps each
                     ──► CoAM (or NOAM) on the `attention_layers` deepest maps, both directions
                     ──► U-Net decoder (scSE) ──► CenterNet head  ──► heatmap/size/offset per image

Both images go through the same modules (stacked as one batch), so the model is symmetric:
swapping the inputs swaps the outputs.

Input normalisation: images are float B×3×S×S in [0,1] (S a multiple of 32). The ImageNet mean/std
normalisation is applied inside the model ONLY when pretrained ImageNet weights were loaded
(`pretrained_weights` non-empty: "imagenet" or a file); a randomly initialised model sees the raw [0,1] values, as the
reference did. The choice is stored with the checkpoint (through its `pretrained_weights` field),
so a loaded model normalises exactly as it did in training, without needing the weights file.

Checkpoint format (`save_model` / `load_model`): `torch.save({"format": "spotdiff-cyws/1",
"model": {ModelParams fields}, "state_dict": ...})`, read back with `torch.load(weights_only=True)`.
`load_model` also reads the authors' published Lightning checkpoint (`spotdiff.models.official`), so
every consumer (detect, evaluate, serving) takes either file.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from spotdiff.errors import SpotdiffError
from spotdiff.models.centernet import CenterNetHead, centernet_loss, decode
from spotdiff.models.coattention import CoAttention, NoAttention, key_widths
from spotdiff.models.decoder import UnetDecoder
from spotdiff.models.encoder import build_encoder

# The limits of the model's settings are the params schema's (one definition, in spotdiff.params):
# a model built from params.yaml was checked there; one built in code is checked here the same way.
from spotdiff.params import (
    ATTENTION_FUSIONS,
    ATTENTION_INITS,
    ATTENTION_LAYERS_MAX,
    ATTENTION_LAYERS_MIN,
    ATTENTION_SCALES,
    ATTENTIONS,
    BACKBONES,
    DECODER_CHANNELS_RULE,
    IMAGE_SIZE_RULE,
    MAX_BOXES_MAX,
    MAX_BOXES_MIN,
    OUTPUT_STRIDES,
    REFERENCE_DECODER_CHANNELS,
    decoder_channels_ok,
    image_size_ok,
)

FORMAT = "spotdiff-cyws/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DECODER_CHANNELS = REFERENCE_DECODER_CHANNELS  # the reference's widths: the constructor's default
CONFIG_KEYS = ("backbone", "attention", "attention_layers", "scse", "image_size", "pretrained_weights",
               "max_boxes", "attention_scale", "attention_init", "attention_fusion", "decoder_channels",
               "output_stride")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CYWS(nn.Module):
    """Shared encoder + co-attention + U-Net decoder + CenterNet head, applied to both images."""

    def __init__(
        self,
        backbone: str = "resnet50",
        attention: str = "coam",
        attention_layers: int = 3,
        scse: bool = True,
        pretrained_weights: str = "",
        max_boxes: int = 100,
        image_size: int = 256,
        attention_scale: str = "none",
        attention_init: str = "independent",
        attention_fusion: str = "concat",
        decoder_channels: Sequence[int] = DECODER_CHANNELS,
        output_stride: int = 1,
    ) -> None:
        super().__init__()
        if backbone not in BACKBONES:
            raise SpotdiffError(f"model.backbone: {backbone!r} is not supported; use one of {', '.join(BACKBONES)}")
        if attention not in ATTENTIONS:
            raise SpotdiffError(f"model.attention: {attention!r} is not supported; use one of {', '.join(ATTENTIONS)}")
        if not (_is_int(attention_layers) and ATTENTION_LAYERS_MIN <= attention_layers <= ATTENTION_LAYERS_MAX):
            raise SpotdiffError(f"model.attention_layers: {attention_layers!r} must be an integer in "
                                f"[{ATTENTION_LAYERS_MIN}, {ATTENTION_LAYERS_MAX}]")
        if not (_is_int(max_boxes) and MAX_BOXES_MIN <= max_boxes <= MAX_BOXES_MAX):
            raise SpotdiffError(f"model.max_boxes: {max_boxes!r} must be an integer in [{MAX_BOXES_MIN}, {MAX_BOXES_MAX}]")
        if not image_size_ok(image_size):
            raise SpotdiffError(f"model.image_size: {image_size!r} must be {IMAGE_SIZE_RULE}")
        if attention_scale not in ATTENTION_SCALES:
            raise SpotdiffError(f"model.attention_scale: {attention_scale!r} is not supported; "
                                f"use one of {', '.join(ATTENTION_SCALES)}")
        decoder_channels = list(decoder_channels)
        if not decoder_channels_ok(decoder_channels):
            raise SpotdiffError(f"model.decoder_channels: {decoder_channels!r} must be {DECODER_CHANNELS_RULE} "
                                f"(the reference: {', '.join(map(str, REFERENCE_DECODER_CHANNELS))})")
        if attention_init not in ATTENTION_INITS:
            raise SpotdiffError(f"model.attention_init: {attention_init!r} is not supported; "
                                f"use one of {', '.join(ATTENTION_INITS)}")
        if attention_fusion not in ATTENTION_FUSIONS:
            raise SpotdiffError(f"model.attention_fusion: {attention_fusion!r} is not supported; "
                                f"use one of {', '.join(ATTENTION_FUSIONS)}")
        if output_stride not in OUTPUT_STRIDES or isinstance(output_stride, bool):
            raise SpotdiffError(f"model.output_stride: {output_stride!r} is not supported; "
                                f"use one of {', '.join(map(str, OUTPUT_STRIDES))}")
        self.config: dict[str, Any] = {
            "backbone": backbone, "attention": attention, "attention_layers": attention_layers,
            "scse": bool(scse), "image_size": image_size, "pretrained_weights": str(pretrained_weights or ""),
            "max_boxes": max_boxes, "attention_scale": attention_scale, "attention_init": attention_init,
            "attention_fusion": attention_fusion,
            "decoder_channels": decoder_channels, "output_stride": output_stride,
        }
        self.max_boxes = max_boxes
        self.output_stride = output_stride
        self.encoder = build_encoder(backbone, pretrained_weights)
        channels = list(self.encoder.out_channels)
        # Deepest first: stage indices 4, 3, 2 (2048@/32, 1024@/16, 512@/8 for ResNet-50).
        self.attention_levels = [4, 3, 2][:attention_layers]
        widths = key_widths(backbone)
        self.attention = nn.ModuleList(
            CoAttention(channels[lvl], widths[j], attention_scale, attention_init, attention_fusion) if attention == "coam"
            else NoAttention()
            for j, lvl in enumerate(self.attention_levels)
        )
        decoder_in = [c * 2 if i in self.attention_levels else c for i, c in enumerate(channels)]
        self.decoder = UnetDecoder(decoder_in, decoder_channels, scse=scse, output_stride=output_stride)
        self.head = CenterNetHead(self.decoder.out_channels, decoder_channels[-1])
        self.normalize_input = bool(pretrained_weights)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    @classmethod
    def from_params(cls, model_params: Any) -> "CYWS":
        """Build from a `spotdiff.params.ModelParams` (or any object/dict with its fields).

        A setting it lacks (a checkpoint saved before the setting existed) takes the constructor's
        default, the reference's.
        """
        missing = object()
        get = (model_params.get if isinstance(model_params, dict)
               else lambda k, d: getattr(model_params, k, d))
        given = {k: get(k, missing) for k in CONFIG_KEYS}
        return cls(**{k: v for k, v in given.items() if v is not missing})

    def summary(self) -> str:
        """Its settings in one line, e.g. "mobilenet_v2, 3×coam (difference), scSE on, 64 px"."""
        c = self.config
        fusion = " (difference)" if c["attention_fusion"] == "difference" else ""
        stride = f", head at 1/{c['output_stride']}" if c["output_stride"] != 1 else ""
        return (f"{c['backbone']}, {c['attention_layers']}×{c['attention']}{fusion}, "
                f"scSE {'on' if c['scse'] else 'off'}, {c['image_size']} px{stride}")

    # ----------------------------------------------------------------------------- forward

    def _check_images(self, image_a: torch.Tensor, image_b: torch.Tensor) -> None:
        for name, img in (("image_a", image_a), ("image_b", image_b)):
            if img.dim() != 4 or img.shape[1] != 3:
                raise SpotdiffError(f"{name}: expected a B×3×H×W tensor, got shape {tuple(img.shape)}")
            if img.shape[2] % 32 or img.shape[3] % 32:
                raise SpotdiffError(f"{name}: height and width must be multiples of 32 "
                                    f"(got {tuple(img.shape[2:])}); resize the images first")
        if image_a.shape != image_b.shape:
            raise SpotdiffError(f"image pair: shapes differ ({tuple(image_a.shape)} vs "
                                f"{tuple(image_b.shape)}); resize both to the same size")

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor, return_attention: bool = False):
        """(out_a, out_b) dicts of heatmap logits B×1×M×M, size B×2×M×M, offset B×2×M×M, where
        M = S / output_stride and size/offset are in map cells (`decode` gives boxes in input pixels).

        With `return_attention=True` also returns {"a_to_b", "b_to_a"}: the deepest level's
        attention, B×h×w×h×w (query position, then the other image's position; sums to 1 over the
        last two axes), or None for NOAM.
        """
        self._check_images(image_a, image_b)
        bsz = image_a.shape[0]
        x = torch.cat([image_a, image_b], dim=0)
        if self.normalize_input:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats = self.encoder(x)
        attn = None
        for j, (lvl, module) in enumerate(zip(self.attention_levels, self.attention)):
            fa, fb = feats[lvl][:bsz], feats[lvl][bsz:]
            oa, ob, att_ab, att_ba = module(fa, fb, return_attention=True)
            feats[lvl] = torch.cat([oa, ob], dim=0)
            if j == 0 and att_ab is not None:
                h, w = fa.shape[2:]
                attn = {"a_to_b": att_ab.view(bsz, h, w, h, w), "b_to_a": att_ba.view(bsz, h, w, h, w)}
        out = self.head(self.decoder(feats))
        out_a = {k: v[:bsz] for k, v in out.items()}
        out_b = {k: v[bsz:] for k, v in out.items()}
        if return_attention:
            return out_a, out_b, attn
        return out_a, out_b

    @torch.no_grad()
    def attention_maps(self, image_a: torch.Tensor, image_b: torch.Tensor):
        """The deepest CoAM attention maps (see `forward`) in eval mode; None for NOAM."""
        was_training = self.training
        self.eval()
        try:
            return self.forward(image_a, image_b, return_attention=True)[2]
        finally:
            self.train(was_training)

    # -------------------------------------------------------------------------- loss/predict

    def loss(
        self,
        out_a: dict[str, torch.Tensor],
        out_b: dict[str, torch.Tensor],
        boxes_a: Sequence[torch.Tensor],
        boxes_b: Sequence[torch.Tensor],
    ) -> dict[str, torch.Tensor]:
        """Sum over both images of the CenterNet loss (each averaged over its side's objects)."""
        s = self.output_stride
        la, lb = centernet_loss(out_a, boxes_a, stride=s), centernet_loss(out_b, boxes_b, stride=s)
        return {k: la[k] + lb[k] for k in ("loss", "heatmap", "size", "offset")}

    @torch.no_grad()
    def predict(self, image_a: torch.Tensor, image_b: torch.Tensor, reference: bool = False):
        """(dets_a, dets_b): per image (boxes N×4 xyxy at S, scores N), sorted, N ≤ max_boxes.

        Boxes are clipped to the image and zero scores dropped; `reference=True` gives the
        reference's decode instead (exactly max_boxes raw boxes, see `centernet.decode`).
        Runs in eval mode (the previous train/eval mode is restored afterwards).
        """
        was_training = self.training
        self.eval()
        try:
            out_a, out_b = self.forward(image_a, image_b)
        finally:
            self.train(was_training)
        return self.decode(out_a, reference), self.decode(out_b, reference)

    def decode(self, out: dict[str, torch.Tensor], reference: bool = False):
        """Per image (boxes N×4 xyxy in input pixels, scores N) from `forward`'s outputs for one side
        (this model's max_boxes and output stride; see `centernet.decode`)."""
        return decode(out, self.max_boxes, reference=reference, stride=self.output_stride)

    # ------------------------------------------------------------------------------- sizes

    def param_breakdown(self) -> dict[str, int]:
        """Trainable parameters per part: encoder, attention, decoder, head, total."""
        def count(m: nn.Module) -> int:
            return sum(p.numel() for p in m.parameters() if p.requires_grad)

        parts = {"encoder": count(self.encoder), "attention": count(self.attention),
                 "decoder": count(self.decoder), "head": count(self.head)}
        parts["total"] = count(self)
        return parts
