"""Inference engines for CYWS: the same forward pass run by eager PyTorch, ONNX Runtime, torch.compile, ...

Every engine is a callable `engine(image_a, image_b) -> (out_a, out_b)` with exactly the outputs of
`CYWS.forward` (per image: heatmap logits B×1×S×S, size B×2×S×S, offset B×2×S×S, float32, on the
model's device), so `CYWS.decode` turns any of them into boxes.

    eager          PyTorch fp32 under `torch.inference_mode` (the reference every other one is checked
                   against; benchmarks/bench_cyws_inference.py)
    onnxruntime    the whole two-image model exported to ONNX (dynamic batch, fixed S×S) and run by
                   ONNX Runtime's CPU execution provider with as many intra-op threads as torch uses.
                   The export is cached under the spotdiff cache folder, keyed by the md5 of the
                   weights and model settings (+ exporter versions), written atomically.
    channels_last  eager fp32 on an NHWC copy of the model
    compile        `torch.compile` (inductor, weights frozen); the first call compiles (minutes on 2 cores)
    bf16           eager under bf16 autocast; not exact (bf16 has 8 mantissa bits), for GPUs
    auto           onnxruntime on the CPU (faster than eager, same boxes: BENCHMARKS.md, CYWS
                   inference engines), eager on a GPU

`detections_agree` is the equality check the benchmark and the tests use: same top-k peaks (scores
within a tolerance) and box coordinates within 0.5 px.

This lives under methods/ (inference), not models/: the train stage depends on src/spotdiff/models,
so changing an engine re-runs the evaluation, never the training.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from spotdiff.errors import SpotdiffError
from spotdiff.fsutil import atomic_path
from spotdiff.models.centernet import decode

ENGINES = ("auto", "eager", "onnxruntime", "channels_last", "compile", "bf16")
OUTPUT_KEYS = ("heatmap", "size", "offset")
ONNX_OPSET = 18
# Bump when the exported graph's interface changes, so stale cache entries are never reused.
ONNX_FORMAT = "spotdiff-cyws-onnx/1"

Outputs = tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]


def cache_dir() -> Path:
    """Where exported graphs are kept: $SPOTDIFF_CACHE_DIR, else $XDG_CACHE_HOME/spotdiff, else ~/.cache/spotdiff."""
    env = os.environ.get("SPOTDIFF_CACHE_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spotdiff"


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(kind: str, device: torch.device | str) -> str:
    """The concrete engine for `kind` on `device` ("auto" → onnxruntime on CPU, eager on GPU)."""
    if kind not in ENGINES:
        raise SpotdiffError(f"engine: unknown engine {kind!r}; use one of {', '.join(ENGINES)}")
    device = torch.device(device)
    if kind == "auto":
        return "onnxruntime" if device.type == "cpu" and onnxruntime_available() else "eager"
    if kind == "onnxruntime" and device.type != "cpu":
        raise SpotdiffError(f"engine onnxruntime runs on the CPU only (the model is on {device}); "
                            "use --engine eager (or bf16) on a GPU, or auto")
    return kind


def weights_md5(model: torch.nn.Module) -> str:
    """md5 of the model's settings and every state_dict tensor (names, dtypes, shapes and bytes)."""
    h = hashlib.md5()
    h.update(json.dumps(getattr(model, "config", {}), sort_keys=True).encode())
    h.update(str(bool(getattr(model, "normalize_input", False))).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b"")  # no copy
    return h.hexdigest()


class _Engine:
    """Base: a named callable over (image_a, image_b)."""

    kind = "?"

    def __call__(self, image_a: torch.Tensor, image_b: torch.Tensor) -> Outputs:  # pragma: no cover
        raise NotImplementedError


class EagerEngine(_Engine):
    """PyTorch eager fp32 (optionally on a channels_last copy, or under autocast)."""

    def __init__(self, model: torch.nn.Module, kind: str = "eager") -> None:
        self.kind = kind
        self.model = model.eval()
        self.device = next(model.parameters()).device
        self.autocast = None
        if kind == "channels_last":
            self.model = copy.deepcopy(model).eval().to(memory_format=torch.channels_last)
        elif kind == "bf16":
            self.autocast = self.device.type

    def __call__(self, image_a: torch.Tensor, image_b: torch.Tensor) -> Outputs:
        if self.kind == "channels_last":
            image_a = image_a.contiguous(memory_format=torch.channels_last)
            image_b = image_b.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.autocast is not None:
                with torch.autocast(self.autocast, dtype=torch.bfloat16):
                    out_a, out_b = self.model(image_a, image_b)
            else:
                out_a, out_b = self.model(image_a, image_b)
        if self.kind in ("channels_last", "bf16"):  # same contract as eager: float32, contiguous
            out_a = {k: v.float().contiguous() for k, v in out_a.items()}
            out_b = {k: v.float().contiguous() for k, v in out_b.items()}
        return out_a, out_b


class CompiledEngine(_Engine):
    """`torch.compile` (inductor) with frozen weights; compiles lazily on the first call per batch size."""

    kind = "compile"

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.compiled = torch.compile(self.model, options={"freezing": True})

    def __call__(self, image_a: torch.Tensor, image_b: torch.Tensor) -> Outputs:
        with torch.inference_mode():
            out_a, out_b = self.compiled(image_a, image_b)
        return ({k: v.clone() for k, v in out_a.items()}, {k: v.clone() for k, v in out_b.items()})


class _TwoImageGraph(torch.nn.Module):
    """What is exported: CYWS.forward with its two output dicts flattened to six tensors."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image_a: torch.Tensor, image_b: torch.Tensor):
        out_a, out_b = self.model(image_a, image_b)
        return tuple(out_a[k] for k in OUTPUT_KEYS) + tuple(out_b[k] for k in OUTPUT_KEYS)


INPUT_NAMES = ["image_a", "image_b"]
OUTPUT_NAMES = [f"{k}_{side}" for side in ("a", "b") for k in OUTPUT_KEYS]


def onnx_path(model: torch.nn.Module, folder: str | Path | None = None) -> Path:
    """The cache file for this model's exported graph (it may not exist yet)."""
    import onnxruntime

    key = hashlib.md5(
        f"{ONNX_FORMAT}|{weights_md5(model)}|torch {torch.__version__}|ort {onnxruntime.__version__}"
        f"|opset {ONNX_OPSET}".encode()).hexdigest()
    return Path(folder if folder is not None else cache_dir() / "onnx") / f"cyws-{key}.onnx"


def export_onnx(model: torch.nn.Module, path: str | Path) -> Path:
    """Export the whole two-image model (eval mode, dynamic batch, S×S of `model.config`) atomically.

    Uses torch's TorchScript-based exporter (about 1 s for R18, 10 s for R50 on 2 cores); when a
    torch release no longer has it, the torch.export-based one (several times slower to export, the
    same graph for ONNX Runtime).
    """
    import contextlib
    import io
    import warnings


    size = int(model.config["image_size"])
    was_training = model.training
    model.eval()
    graph = _TwoImageGraph(model)
    example = (torch.rand(2, 3, size, size), torch.rand(2, 3, size, size))
    common = {"input_names": INPUT_NAMES, "output_names": OUTPUT_NAMES, "opset_version": ONNX_OPSET}
    try:
        with atomic_path(path) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")  # deprecation and tracer notes about the shape checks
            try:
                torch.onnx.export(graph, example, str(tmp), dynamo=False, **common,
                                  dynamic_axes={name: {0: "batch"} for name in INPUT_NAMES + OUTPUT_NAMES})
            except (TypeError, RuntimeError, NotImplementedError):
                batch = torch.export.Dim("batch", min=1, max=4096)
                torch.onnx.export(graph, example, str(tmp), dynamo=True, external_data=False, **common,
                                  dynamic_shapes=({0: batch}, {0: batch}))
    finally:
        model.train(was_training)
    _prune_cache(Path(path).parent, keep=Path(path))
    return Path(path)


CACHE_KEEP = 4  # exported graphs kept per cache folder (newest first); each is the model's size


def _prune_cache(folder: Path, keep: Path) -> None:
    """Delete all but the CACHE_KEEP most recently used exports (never `keep`)."""
    files = sorted(folder.glob("cyws-*.onnx"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[CACHE_KEEP:]:
        if old != keep:
            old.unlink(missing_ok=True)


class OnnxRuntimeEngine(_Engine):
    """The exported graph run by ONNX Runtime's CPU execution provider."""

    kind = "onnxruntime"

    def __init__(self, model: torch.nn.Module, threads: int | None = None,
                 folder: str | Path | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:  # a dependency of the package; only a broken install lacks it
            raise SpotdiffError("engine onnxruntime: the onnxruntime package is not installed; "
                                "reinstall spotdiff (pip install -e .) or use --engine eager") from exc
        if next(model.parameters()).device.type != "cpu":
            raise SpotdiffError("engine onnxruntime: the model must be on the CPU; use eager on a GPU")
        self.path = onnx_path(model, folder)
        self.exported = not self.path.is_file()
        if self.exported:
            export_onnx(model, self.path)
        else:
            os.utime(self.path)  # most recently used: kept by the pruning
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.threads = options.intra_op_num_threads
        self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        self.size = int(model.config["image_size"])

    def __call__(self, image_a: torch.Tensor, image_b: torch.Tensor) -> Outputs:
        for name, img in (("image_a", image_a), ("image_b", image_b)):
            if img.dim() != 4 or tuple(img.shape[1:]) != (3, self.size, self.size):
                raise SpotdiffError(f"{name}: the exported model takes B×3×{self.size}×{self.size}, "
                                    f"got {tuple(img.shape)}; resize the images first")
        if image_a.shape != image_b.shape:
            raise SpotdiffError(f"image pair: shapes differ ({tuple(image_a.shape)} vs {tuple(image_b.shape)})")
        feed = {"image_a": np.ascontiguousarray(image_a.detach().cpu().float().numpy()),
                "image_b": np.ascontiguousarray(image_b.detach().cpu().float().numpy())}
        outs = [torch.from_numpy(o) for o in self.session.run(OUTPUT_NAMES, feed)]
        n = len(OUTPUT_KEYS)
        return dict(zip(OUTPUT_KEYS, outs[:n])), dict(zip(OUTPUT_KEYS, outs[n:]))


def make_engine(model: torch.nn.Module, kind: str = "auto", *, threads: int | None = None,
                folder: str | Path | None = None) -> _Engine:
    """An engine running `model` (a CYWS, on its current device) as `kind` (see ENGINES)."""
    device = next(model.parameters()).device
    chosen = resolve_engine(kind, device)
    if chosen == "onnxruntime":
        try:
            return OnnxRuntimeEngine(model, threads=threads, folder=folder)
        except Exception as exc:  # noqa: BLE001 - "auto" must still answer: eager gives the same boxes
            if kind != "auto":
                raise
            import warnings

            warnings.warn(f"engine auto: ONNX Runtime unavailable for this model ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200] if str(exc) else ''}); running eager PyTorch",
                          RuntimeWarning, stacklevel=2)
            return EagerEngine(model, "eager")
    kind = chosen
    if kind == "compile":
        return CompiledEngine(model)
    return EagerEngine(model, kind)


# ------------------------------------------------------------------------------------- equality


def detections_agree(
    reference: Sequence[tuple[torch.Tensor, torch.Tensor]],
    candidate: Sequence[tuple[torch.Tensor, torch.Tensor]],
    score_tol: float = 1e-4,
    px_tol: float = 0.5,
) -> dict:
    """Compare two engines' decoded detections (per image: boxes N×4, scores N, sorted).

    Every reference detection must have a candidate detection with a score within `score_tol` and
    all four coordinates within `px_tol` pixels — except those whose score is within `score_tol` of
    the list's last score (a near-tie at the top-k cut may legitimately swap in or out). Returns
    {"equal", "peaks_matched", "peaks_compared", "boundary_ties", "max_box_delta_px",
    "max_score_delta", "same_count"}.
    """
    matched = compared = ties = 0
    max_px = max_score = 0.0
    same_count = True
    for (rb, rs), (cb, cs) in zip(reference, candidate, strict=True):
        rb, rs = rb.float().cpu().numpy().reshape(-1, 4), rs.float().cpu().numpy().reshape(-1)
        cb, cs = cb.float().cpu().numpy().reshape(-1, 4), cs.float().cpu().numpy().reshape(-1)
        same_count &= len(rs) == len(cs)
        if len(rs) == 0:
            continue
        cut = rs[-1] + score_tol
        for box, score in zip(rb, rs):
            if score <= cut and len(rs) > 1:
                ties += 1
                continue
            compared += 1
            close = np.abs(cs - score) <= score_tol
            if not close.any():
                continue
            delta = np.abs(cb[close] - box).max(axis=1)
            j = int(delta.argmin())
            if delta[j] <= px_tol:
                matched += 1
                max_px = max(max_px, float(delta[j]))
                max_score = max(max_score, float(np.abs(cs[close][j] - score)))
    return {"equal": bool(matched == compared and same_count), "peaks_matched": matched,
            "peaks_compared": compared, "boundary_ties": ties, "max_box_delta_px": max_px,
            "max_score_delta": max_score, "same_count": bool(same_count)}


def run_decoded(engine: Callable[[torch.Tensor, torch.Tensor], Outputs], image_a: torch.Tensor,
                image_b: torch.Tensor, max_boxes: int = 100, stride: int = 1):
    """(dets_a, dets_b) of `engine` on a batch, decoded like `CYWS.predict` (`stride`: the model's
    output_stride)."""
    out_a, out_b = engine(image_a, image_b)
    return decode(out_a, max_boxes, stride=stride), decode(out_b, max_boxes, stride=stride)


@torch.no_grad()
def spread_head_outputs(model: torch.nn.Module, image_a: torch.Tensor, image_b: torch.Tensor) -> torch.nn.Module:
    """Rescale an untrained model's head so its outputs look like a trained one's (for equality checks).

    A randomly initialised CYWS has near-constant heatmap logits (all scores ≈ 0.1, ties everywhere)
    and sizes ≈ 0, so comparing engines on it says little. This sets each head branch's last conv
    (scale and bias) so that, on these images, heatmap logits have mean -4 and std 2 (a few clear
    peaks), sizes mean 15 % of the image side (std 5 %) and offsets mean 0.5 px (std 0.25).
    In place; returns the model.
    """
    was_training = model.training
    model.eval()
    out_a, out_b = model(image_a, image_b)
    side = float(image_a.shape[-1])
    targets = {"heatmap": (-4.0, 2.0), "size": (0.15 * side, 0.05 * side), "offset": (0.5, 0.25)}
    for key, (mean, std) in targets.items():
        conv = getattr(model.head, key)[-1]
        values = torch.cat([out_a[key], out_b[key]]) - conv.bias.view(1, -1, 1, 1)
        scale = std / max(float(values.std()), 1e-12)
        conv.weight.mul_(scale)
        conv.bias.copy_(mean - scale * values.mean(dim=(0, 2, 3)))
    model.train(was_training)
    return model
