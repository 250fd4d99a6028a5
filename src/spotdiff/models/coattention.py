"""Co-attention between the two images' feature maps: CoAM and the NOAM ablation (the paper's no-attention baseline).

CoAM, for a query map f (B×C×H×W) and the other image's map g (B×C×H'×W'):
    Q = conv1x1_q(f) (B×d×HW),  K = conv1x1_k(g) (B×d×H'W'),  V = g (raw features)
    A = softmax over the H'W' positions of g of s·Σ_c Q·K
        s = 1 ("none": the reference's exact semantics, needed for its published weights) or
        1/√d ("sqrt_d": logits that do not saturate from random init, so rows start near uniform
        instead of one-hot on an arbitrary position)
    out = [f ‖ A·V]  (2C channels at f's resolution; fusion "concat", the paper's), or
    out = [f ‖ |f − A·V|]  (fusion "difference": the decoder is handed how far each position is from
        what it attends to in the other image, instead of having to learn the subtraction; same
        widths, so the decoder and the cost are unchanged. docs/LEARNING.md has its measured gain)
One module serves both directions: `forward(fa, fb)` returns (ψ(fa, fb), ψ(fb, fa)).
NOAM: out = [f ‖ g], no parameters.

Initialisation ("independent" | "matching"): the reference draws the query and key convs
independently, so at random init each row of A is peaked on an arbitrary position. "matching" starts
the key conv as a copy of the query conv, so Σ_c Q·K is a similarity of the two images' own features
and A starts peaked on the corresponding position (measured on a random R18 in train mode, an
identical pair: weight 1.00 / 0.88 / 0.31 on the same position at the three levels vs chance). Only
the starting point differs; the forward is the reference's, and published weights overwrite both.
"""

from __future__ import annotations

import torch
from torch import nn

from spotdiff.params import ATTENTION_FUSIONS, ATTENTION_INITS, ATTENTION_SCALES  # the choices, defined once


class CoAttention(nn.Module):
    """Co-attention module (CoAM) for one feature level."""

    def __init__(self, channels: int, key_channels: int, scale: str = "none",
                 init: str = "independent", fusion: str = "concat") -> None:
        super().__init__()
        if scale not in ATTENTION_SCALES:
            raise ValueError(f"attention scale {scale!r}: use one of {', '.join(ATTENTION_SCALES)}")
        if init not in ATTENTION_INITS:
            raise ValueError(f"attention init {init!r}: use one of {', '.join(ATTENTION_INITS)}")
        if fusion not in ATTENTION_FUSIONS:
            raise ValueError(f"attention fusion {fusion!r}: use one of {', '.join(ATTENTION_FUSIONS)}")
        self.scale = 1.0 if scale == "none" else key_channels ** -0.5
        self.difference = fusion == "difference"
        self.query_conv = nn.Conv2d(channels, key_channels, kernel_size=1, bias=True)
        self.key_conv = nn.Conv2d(channels, key_channels, kernel_size=1, bias=True)
        if init == "matching":
            with torch.no_grad():
                self.key_conv.weight.copy_(self.query_conv.weight)
                self.key_conv.bias.copy_(self.query_conv.bias)

    def attention(self, query: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        """A: B × (H·W of query) × (H'·W' of other); each row sums to 1."""
        q = self.query_conv(query).flatten(2)  # B×d×N
        k = self.key_conv(other).flatten(2)  # B×d×M
        logits = torch.bmm(q.transpose(1, 2), k)  # B×N×M
        if self.scale != 1.0:
            logits = logits * self.scale
        return logits.softmax(dim=-1)

    def attend(self, query: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """([query ‖ A·V], A) with V the other image's raw features."""
        a = self.attention(query, other)
        v = other.flatten(2)  # B×C×M
        attended = torch.bmm(v, a.transpose(1, 2)).reshape(query.shape[0], other.shape[1], *query.shape[2:])
        if self.difference:
            attended = (query - attended).abs()
        return torch.cat([query, attended], dim=1), a

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, return_attention: bool = False):
        out_a, att_ab = self.attend(fa, fb)
        out_b, att_ba = self.attend(fb, fa)
        if return_attention:
            return out_a, out_b, att_ab, att_ba
        return out_a, out_b


class NoAttention(nn.Module):
    """NOAM ablation: ψ(f, g) = [f ‖ g]; the decoder has to find the change itself."""

    def forward(self, fa: torch.Tensor, fb: torch.Tensor, return_attention: bool = False):
        out_a, out_b = torch.cat([fa, fb], dim=1), torch.cat([fb, fa], dim=1)
        if return_attention:
            return out_a, out_b, None, None
        return out_a, out_b


def key_widths(backbone: str) -> tuple[int, int, int]:
    """Key/query widths for the three deepest maps, deepest first (paper: 256,128,64 for R50)."""
    return (256, 128, 64) if backbone == "resnet50" else (128, 64, 32)
