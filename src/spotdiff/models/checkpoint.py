"""Model files: our weights-only format ("spotdiff-cyws/1") and the authors' published checkpoint,
both read safely (`weights_only=True`, every tensor onto the CPU first).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import torch_save_atomic
from spotdiff.models import official
from spotdiff.models.cyws import CONFIG_KEYS, CYWS, FORMAT
from spotdiff.models.official import PUBLISHED_FILE_NAME


def save_model(model: CYWS, path: str | Path) -> None:
    """Write the checkpoint atomically (format "spotdiff-cyws/1", tensors on the CPU)."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch_save_atomic(path, {"format": FORMAT, "model": dict(model.config), "state_dict": state})


def _hint() -> str:
    return (f"point to a models/cyws.pt written by `spotdiff train` (or save_model), or to the authors' "
            f"{PUBLISHED_FILE_NAME}")


# What a checkpoint may unpack to: the reference R50 model at full decoder width is ~0.2 GB; the cap
# keeps a deflate-compressed "zip bomb" (a few KB declaring GBs of tensors) from being inflated.
MAX_CHECKPOINT_BYTES = 2 << 30


def _check_archive(path: Path) -> None:
    """Refuse, before torch reads it, a file that is not torch's zip format (the legacy format
    allocates each storage at the size the file declares) or whose members unpack to more than
    MAX_CHECKPOINT_BYTES."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            total = sum(info.file_size for info in zf.infolist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        raise SpotdiffError(f"{path}: not a readable model checkpoint (not torch's zip format, or damaged); "
                            f"{_hint()}") from None
    if total > MAX_CHECKPOINT_BYTES:
        raise SpotdiffError(f"{path}: the checkpoint unpacks to {total / 2**30:.1f} GiB, more than the "
                            f"{MAX_CHECKPOINT_BYTES / 2**30:.0f} GiB a CYWS model needs; {_hint()}")


def read_checkpoint(path: str | Path) -> Any:
    """`torch.load` a checkpoint file safely: weights_only, every tensor onto the CPU (the published
    file's are tagged cuda:0); SpotdiffError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: model checkpoint not found; {_hint()}")
    _check_archive(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise SpotdiffError(f"{path}: not a readable model checkpoint ({type(exc).__name__}: {first}); "
                            f"{_hint()}") from exc


def model_from_checkpoint(ckpt: Any, path: str | Path) -> CYWS:
    """The model in a loaded checkpoint: ours ("spotdiff-cyws/1") or the authors' published layout."""
    if isinstance(ckpt, dict) and ckpt.get("format") != FORMAT and (
            official.is_lightning_checkpoint(ckpt) or official.published_state_dict(ckpt) is not None):
        return official.model_from_published(ckpt, path)
    return _model_from_ours(ckpt, Path(path), _hint())


def load_model(path: str | Path, map_location: Any = "cpu") -> CYWS:
    """Read a checkpoint written by `save_model`, or the authors' published one (see
    `spotdiff.models.official`); weights_only, tensors read onto the CPU first (the published file's
    are tagged cuda:0), then moved to `map_location`. SpotdiffError if it is neither."""
    model = model_from_checkpoint(read_checkpoint(path), path)
    if map_location is not None and not callable(map_location) and not isinstance(map_location, dict):
        model.to(map_location)
    return model.eval()


def _model_from_ours(ckpt: Any, path: Path, hint: str) -> CYWS:
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        found = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise SpotdiffError(f"{path}: not a {FORMAT} checkpoint (format: {found!r}); {hint}")
    cfg, state = ckpt.get("model"), ckpt.get("state_dict")
    if not isinstance(cfg, dict) or not isinstance(state, dict):
        raise SpotdiffError(f"{path}: checkpoint lacks its 'model' or 'state_dict' entry; {hint}")
    unknown = set(cfg) - set(CONFIG_KEYS)
    if unknown:
        raise SpotdiffError(f"{path}: unknown model settings {sorted(unknown)}; {hint}")
    weights = cfg.get("pretrained_weights", "") or ""
    try:
        model = CYWS.from_params({**cfg, "pretrained_weights": ""})
    except SpotdiffError as exc:
        raise SpotdiffError(f"{path}: bad model settings in the checkpoint ({exc}); {hint}") from exc
    model.normalize_input = bool(weights)
    model.config["pretrained_weights"] = str(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise SpotdiffError(f"{path}: weights do not fit the model they claim "
                            f"({str(exc).splitlines()[0]}); {hint}") from exc
    return model
