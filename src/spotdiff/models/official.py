"""The authors' published CYWS checkpoint (`pretrained-resnet50-3x-coam-scSE-affine.ckpt`) as our model.

The file is a PyTorch Lightning 1.5.8 checkpoint: a dict
with `epoch`, `global_step`, `pytorch-lightning_version`, `state_dict`, `callbacks`,
`optimizer_states`, `lr_schedulers`; its tensors are tagged `cuda:0`. It is read with
`torch.load(weights_only=True, map_location="cpu")` (never unpickling objects, and loadable without a
GPU), its 450 weights are renamed onto our modules by a pure, invertible key mapping, and loaded
strictly: every key present, none extra, every shape equal.

Key mapping (ours ⇄ published):

    encoder.*                                   ⇄ unet_model.encoder.*   (torchvision ResNet names)
    decoder.blocks.N.conv{1,2}.{0,1}.*          ⇄ unet_model.decoder.blocks.N.conv{1,2}.{0,1}.*
    decoder.blocks.N.attention{1,2}.cse.I.*     ⇄ unet_model.decoder.blocks.N.attention{1,2}.attention.cSE.I.*
    decoder.blocks.N.attention{1,2}.sse.I.*     ⇄ unet_model.decoder.blocks.N.attention{1,2}.attention.sSE.I.*
    attention.I.query_conv.*                    ⇄ coattention_modules.I.attention_layer.query_dimensionality_reduction.*
    attention.I.key_conv.*                      ⇄ coattention_modules.I.attention_layer.reference_dimensionality_reduction.*
    head.{heatmap,size,offset}.{0,2}.*          ⇄ centernet_head.{heatmap,wh,offset}_head.{0,2}.*

(The Sequential indices agree: cSE = pool, conv 1, ReLU, conv 3, sigmoid; sSE = conv 0, sigmoid;
conv = conv 0, BN 1, ReLU.) The model is built with the reference's settings — image size 256,
CoAM logits unscaled (`attention_scale="none"`), independently initialised key convs, decoder widths
256, 256, 128, 128, 64, no ImageNet mean/std on the input — and with the
backbone, number of CoAM layers and scSE read off the weights (the published file: ResNet-50,
3×CoAM, scSE).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from spotdiff.errors import SpotdiffError
from spotdiff.models.cyws import CYWS
from spotdiff.params import REFERENCE_DECODER_CHANNELS

LIGHTNING_VERSION_KEY = "pytorch-lightning_version"
PUBLISHED_PREFIXES = ("unet_model.", "coattention_modules.", "centernet_head.")
# The settings the authors trained and evaluated with (the rest is read off the weights). Every one
# is spelled out, never left to a default: params.yaml's (and ModelParams') embedded recipe differs.
REFERENCE_SETTINGS = {"image_size": 256, "attention_scale": "none", "attention_init": "independent",
                      "attention_fusion": "concat", "decoder_channels": REFERENCE_DECODER_CHANNELS,
                      "output_stride": 1, "pretrained_weights": "", "max_boxes": 100}
# The paper's Table 1 (AP@0.5) for the published R50 / 3×CoAM / scSE / affine checkpoint.
PAPER_AP50 = {"coco_inpainted": 0.63, "synthtext_change": 0.89, "virat_std": 0.54, "kubric_change": 0.76}
PUBLISHED_FILE_NAME = "pretrained-resnet50-3x-coam-scSE-affine.ckpt"

# (ours, published) name templates; {rest} matches any dotted tail, other fields one name part.
_RULES = (
    ("encoder.{rest}", "unet_model.encoder.{rest}"),
    ("decoder.blocks.{n}.attention{i}.cse.{j}.{p}", "unet_model.decoder.blocks.{n}.attention{i}.attention.cSE.{j}.{p}"),
    ("decoder.blocks.{n}.attention{i}.sse.{j}.{p}", "unet_model.decoder.blocks.{n}.attention{i}.attention.sSE.{j}.{p}"),
    ("decoder.blocks.{n}.conv{i}.{j}.{p}", "unet_model.decoder.blocks.{n}.conv{i}.{j}.{p}"),
    ("attention.{n}.query_conv.{p}", "coattention_modules.{n}.attention_layer.query_dimensionality_reduction.{p}"),
    ("attention.{n}.key_conv.{p}", "coattention_modules.{n}.attention_layer.reference_dimensionality_reduction.{p}"),
    ("head.heatmap.{j}.{p}", "centernet_head.heatmap_head.{j}.{p}"),
    ("head.size.{j}.{p}", "centernet_head.wh_head.{j}.{p}"),
    ("head.offset.{j}.{p}", "centernet_head.offset_head.{j}.{p}"),
)


def _pattern(template: str) -> re.Pattern:
    regex = re.escape(template)
    regex = regex.replace(r"\{rest\}", r"(?P<rest>.+)")
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^.]+)", regex)
    return re.compile(f"^{regex}$")


_COMPILED = tuple((_pattern(ours), ours, _pattern(theirs), theirs) for ours, theirs in _RULES)


def published_key(key: str) -> str:
    """Our state_dict key → the published file's name for it (KeyError if it has none)."""
    for ours_re, _, _, theirs in _COMPILED:
        m = ours_re.match(key)
        if m:
            return theirs.format(**m.groupdict())
    raise KeyError(key)


def spotdiff_key(key: str) -> str:
    """The published file's key → our state_dict key (KeyError if it is not a CYWS weight)."""
    for _, ours, theirs_re, _ in _COMPILED:
        m = theirs_re.match(key)
        if m:
            return ours.format(**m.groupdict())
    raise KeyError(key)


def to_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state_dict renamed into the published layout (same tensors, same order)."""
    return {published_key(k): v for k, v in state.items()}


def from_published(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A published-layout state_dict renamed onto our modules (KeyError on a foreign key)."""
    return {spotdiff_key(k): v for k, v in state.items()}


# ------------------------------------------------------------------------------- recognising


def published_state_dict(ckpt: Any) -> dict[str, Any] | None:
    """The state_dict when `ckpt` (a loaded file) is in the published layout, else None.

    Accepts the Lightning checkpoint dict or its bare state_dict.
    """
    if not isinstance(ckpt, dict):
        return None
    state = ckpt.get("state_dict") if LIGHTNING_VERSION_KEY in ckpt else ckpt
    if isinstance(state, dict) and any(isinstance(k, str) and k.startswith(PUBLISHED_PREFIXES)
                                       for k in state):
        return state
    return None


def is_lightning_checkpoint(ckpt: Any) -> bool:
    return isinstance(ckpt, dict) and LIGHTNING_VERSION_KEY in ckpt


def settings_from_weights(state: Mapping[str, Any]) -> dict[str, Any]:
    """CYWS constructor settings for a published-layout state_dict (reference settings + what the
    weights say: backbone, number of CoAM layers, scSE)."""
    if "unet_model.encoder.layer1.0.conv3.weight" in state:
        backbone = "resnet50"
    elif "unet_model.encoder.layer1.0.conv1.weight" in state:
        backbone = "resnet18"
    else:
        backbone = "resnet50"  # let the strict check name what is missing
    layers = {m.group(1) for k in state if (m := re.match(r"^coattention_modules\.(\d+)\.", k))}
    scse = any(".attention1.attention." in k or ".attention2.attention." in k for k in state)
    return {"backbone": backbone, "attention": "coam" if layers else "noam",
            "attention_layers": min(max(len(layers), 1), 3) if layers else 3, "scse": scse,
            **REFERENCE_SETTINGS}


def _sample(keys: list[str], n: int = 3) -> str:
    shown = ", ".join(keys[:n])
    return shown + (f" … (+{len(keys) - n})" if len(keys) > n else "")


def model_from_published(ckpt: Any, path: str | Path):
    """Build our CYWS from a loaded published-layout checkpoint; strict, one-line SpotdiffError."""
    hint = f"expected the authors' {PUBLISHED_FILE_NAME} (or a file in its layout)"
    state = published_state_dict(ckpt)
    if state is None:
        if is_lightning_checkpoint(ckpt):
            inner = ckpt.get("state_dict")
            keys = sorted(map(str, inner))[:3] if isinstance(inner, dict) else []
            raise SpotdiffError(
                f"{path}: a PyTorch Lightning checkpoint (version {ckpt.get(LIGHTNING_VERSION_KEY)}), but "
                f"not of the CYWS model (its weights are named like {', '.join(keys) or 'nothing'}; "
                f"a CYWS file has unet_model.*, coattention_modules.*, centernet_head.*); {hint}")
        raise SpotdiffError(f"{path}: not a CYWS checkpoint in the published layout; {hint}")
    settings = settings_from_weights(state)
    with torch.device("meta"):  # shapes only: no memory, no init cost
        skeleton = CYWS(**settings)
    expected = {published_key(k): v for k, v in skeleton.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [str(k) for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing ({_sample(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected ({_sample(unexpected)})")
        raise SpotdiffError(f"{path}: the weights do not match CYWS {settings['backbone']} "
                            f"{settings['attention_layers']}×{settings['attention']}"
                            f"{' scSE' if settings['scse'] else ''}: keys {'; '.join(parts)}; {hint}")
    for key, ref in expected.items():
        value = state[key]
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(ref.shape):
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise SpotdiffError(f"{path}: {key} has shape {got}, the model needs {tuple(ref.shape)}; {hint}")
    model = CYWS(**settings)
    model.load_state_dict(from_published(state), strict=True)
    return model.eval()


def provenance(ckpt: Any) -> dict[str, Any]:
    """The Lightning bookkeeping worth recording with an imported model (plain values only)."""
    if not isinstance(ckpt, dict):
        return {}
    out = {k: ckpt[k] for k in ("epoch", "global_step", LIGHTNING_VERSION_KEY)
           if isinstance(ckpt.get(k), (int, str))}
    return out
