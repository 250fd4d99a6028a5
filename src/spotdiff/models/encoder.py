"""The shared ResNet encoder of CYWS: torchvision ResNet-50 / ResNet-18, five feature stages.

Weights are never downloaded: the network is built with `weights=None` (random init) and, when a
local torchvision ImageNet state_dict file is given, loaded from it with `torch.load(weights_only=True)`.
For a 256×256 input ResNet-50 gives 64@128, 256@64, 512@32, 1024@16, 2048@8 (ResNet-18: 64, 64, 128,
256, 512 channels at the same resolutions). The classifier (avgpool, fc) is dropped.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spotdiff.errors import SpotdiffError

STAGE_CHANNELS = {
    "resnet50": (64, 256, 512, 1024, 2048),
    "resnet18": (64, 64, 128, 256, 512),
}


class ResNetEncoder(nn.Module):
    """ResNet trunk returning the 5 stage outputs (strides 2, 4, 8, 16, 32)."""

    def __init__(self, backbone: str = "resnet50", pretrained_weights: str | Path = "") -> None:
        super().__init__()
        import torchvision

        if backbone not in STAGE_CHANNELS:
            raise SpotdiffError(
                f"model.backbone: unknown backbone {backbone!r}; use one of {sorted(STAGE_CHANNELS)}"
            )
        self.backbone = backbone
        self.out_channels = STAGE_CHANNELS[backbone]
        net = getattr(torchvision.models, backbone)(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        if pretrained_weights:
            self.load_imagenet(pretrained_weights)

    def load_imagenet(self, path: str | Path) -> None:
        """Load a local torchvision ImageNet state_dict (the `fc.*` classifier keys are ignored)."""
        path = Path(path)
        if not path.is_file():
            raise SpotdiffError(
                f"{path}: ImageNet weights file not found; put a torchvision {self.backbone} state_dict "
                "there or set model.pretrained_weights to '' for random init (weights are never downloaded)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt file, or pickled objects weights_only refuses
            raise SpotdiffError(
                f"{path}: cannot read ImageNet weights ({type(exc).__name__}: {exc}); "
                "expected a plain torchvision state_dict saved with torch.save"
            ) from exc
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise SpotdiffError(f"{path}: not a state_dict (got {type(state).__name__}); "
                                "expected a torchvision ResNet state_dict")
        state = {k: v for k, v in state.items() if not k.startswith("fc.")}
        try:
            self.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise SpotdiffError(
                f"{path}: does not match torchvision {self.backbone} ({str(exc).splitlines()[0]}); "
                "use the weights of the same backbone"
            ) from exc

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return [f1, f2, f3, f4, f5]
