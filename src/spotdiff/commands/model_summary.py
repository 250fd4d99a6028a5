"""`spotdiff model-summary`: trainable parameters of a CYWS configuration, per part, as a table.

The model is built on PyTorch's `meta` device (no memory, no weights, instant), so even the
ResNet-50 configuration is summarised in well under a second; the feature map sizes come from a
shape-only forward pass at `--image-size`.
"""

from __future__ import annotations

import typer


def model_summary(
    backbone: str = typer.Option("resnet50", help="encoder: resnet50 | resnet18"),
    attention: str = typer.Option("coam", help="co-attention: coam | noam (plain concatenation)"),
    scse: bool = typer.Option(True, "--scse/--no-scse", help="scSE attention in the decoder"),
    layers: int = typer.Option(3, help="how many of the deepest feature maps get attention (1..3)"),
    image_size: int = typer.Option(256, help="input size S (a multiple of 32, >= 64) for the feature-map shapes"),
) -> None:
    """Print total trainable parameters and the breakdown (encoder, attention, decoder, head)."""
    import torch
    from rich.console import Console
    from rich.table import Table

    from spotdiff.errors import SpotdiffError
    from spotdiff.models.cyws import CYWS
    from spotdiff.params import IMAGE_SIZE_RULE, image_size_ok

    if not image_size_ok(image_size):
        raise SpotdiffError(f"--image-size: {image_size} must be {IMAGE_SIZE_RULE}; e.g. 256")
    with torch.device("meta"):
        model = CYWS(backbone=backbone, attention=attention, attention_layers=layers, scse=scse,
                     image_size=image_size)
        feats = model.encoder(torch.empty(1, 3, image_size, image_size))
    parts = model.param_breakdown()
    title = f"CYWS {backbone}, {layers}×{attention.upper()}, scSE {'on' if scse else 'off'}"
    table = Table(title=title, caption="trainable parameters")
    table.add_column("part")
    table.add_column("parameters", justify="right")
    table.add_column("M", justify="right")
    table.add_column("share", justify="right")
    for name in ("encoder", "attention", "decoder", "head"):
        n = parts[name]
        table.add_row(name, f"{n:,}", f"{n / 1e6:.2f}", f"{100 * n / max(parts['total'], 1):.1f}%")
    table.add_row("total", f"{parts['total']:,}", f"{parts['total'] / 1e6:.2f}", "100.0%", style="bold")

    maps = Table(title=f"encoder feature maps at {image_size}×{image_size}")
    maps.add_column("stage", justify="right")
    maps.add_column("channels@size")
    maps.add_column("to decoder")
    for i, f in enumerate(feats):
        attended = i in model.attention_levels
        maps.add_row(str(i + 1), f"{f.shape[1]}@{f.shape[2]}",
                     f"{2 * f.shape[1]} ({attention.upper()})" if attended else str(f.shape[1]))
    console = Console()
    console.print(table)
    console.print(maps)


def register(app: typer.Typer) -> None:
    app.command("model-summary")(model_summary)
