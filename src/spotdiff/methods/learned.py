"""The learned method behind the Detector interface: CYWS on a pair of images of any size.

Both images are resized to the model's square input, run as one batch, and the boxes are mapped
back into each image's own pixels. `detect` returns every decoded box (up to the model's
`max_boxes`, no suppression — the evaluation protocol), clipped to its image and without the
zero-score non-peaks (`CYWS.predict(reference=True)` gives the reference's raw, unclipped 100);
`display` (`suppress`: top-k after NMS) picks the boxes people see. The model cannot take an
ignore mask into its computation: boxes lying mostly inside it are dropped from its output
(`PairDetections.drop_ignored`, the one rule, in A and — the mask scaled — in B).
`from_reference` accepts a checkpoint path (ours or the authors' published file), an MLflow
registry reference (`models:/spotdiff@champion`, `models:/spotdiff/3`) or a run reference
(`runs:/<id>/model`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

import cv2
import numpy as np
import torch

from spotdiff import tracking
from spotdiff.boxes import scale_boxes, suppress
from spotdiff.errors import SpotdiffError
from spotdiff.methods.base import Detector, Overlay, PairDetections, Result
from spotdiff.methods.engines import make_engine, resolve_engine
from spotdiff.methods.registration import auto_homography
from spotdiff.models.checkpoint import load_model
from spotdiff.models.cyws import CYWS

DISPLAY_TOP_K = 5  # boxes drawn by default (after NMS), as the paper's figures
PAIRING_SIDE = 512  # registration for pairing boxes runs on copies at most this long


def a_to_b_homography(img_a: np.ndarray, img_b: np.ndarray) -> tuple[np.ndarray, str]:
    """(H from A's pixels to B's, how it was found): the pixel-wise method's registration (features +
    ECC, identity when nothing fits better) on grey copies of at most `PAIRING_SIDE` px. It numbers
    the learned model's boxes across the pair; under parallax a single homography is only
    approximate, which the IoU gate of `pair_labels` tolerates."""
    (ha, wa), (hb, wb) = img_a.shape[:2], img_b.shape[:2]
    scale = min(1.0, PAIRING_SIDE / max(ha, wa))
    w, h = max(1, round(wa * scale)), max(1, round(ha * scale))
    grey_a = cv2.cvtColor(cv2.resize(np.ascontiguousarray(img_a[..., :3]), (w, h), interpolation=cv2.INTER_AREA),
                          cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(cv2.resize(np.ascontiguousarray(img_b[..., :3]), (w, h), interpolation=cv2.INTER_AREA),
                          cv2.COLOR_RGB2GRAY)
    b_to_a, method, _ = auto_homography(grey_a, grey_b)  # in the w×h working frame
    to_work_a = np.diag([w / wa, h / ha, 1.0])
    from_work_b = np.diag([wb / w, hb / h, 1.0])
    H = from_work_b @ np.linalg.inv(b_to_a) @ to_work_a
    return H / H[2, 2], method


def _to_input(images: Sequence[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    resized = [cv2.resize(np.ascontiguousarray(img[..., :3]), (size, size), interpolation=cv2.INTER_AREA)
               for img in images]
    batch = torch.from_numpy(np.stack(resized)).to(device)
    return batch.permute(0, 3, 1, 2).float().div_(255.0)


REFERENCE_FORMS = "a checkpoint path, models:/NAME@ALIAS, models:/NAME/VERSION or runs:/RUN_ID/PATH"


def is_registry_reference(ref: str | Path) -> bool:
    """True for an MLflow model/run reference (models:/…, runs:/…), False for a checkpoint path."""
    return str(ref).startswith(("models:/", "runs:/"))


def load_reference(ref: str | Path) -> CYWS:
    """The model behind `ref`: a checkpoint path (ours or the authors' published file) or an MLflow
    reference — `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `models:/m-<logged model id>`,
    `runs:/RUN_ID/PATH`.

    MLflow references are resolved against this repo's store (`tracking.existing_store`: env
    MLFLOW_TRACKING_URI, else params.yaml's, else <repo>/mlruns/mlflow.db) through an explicit
    `MlflowClient` — mlflow's process-wide URIs are neither read nor set, and no store is created
    when none exists. A registered version is loaded from its concrete artifact location (a local
    store is read in place; a remote one is downloaded into a temporary folder, removed after).
    """
    ref = str(ref)
    if not is_registry_reference(ref):
        if "://" in ref:
            raise SpotdiffError(f"--model {ref}: unknown reference; give {REFERENCE_FORMS}")
        return load_model(Path(ref))
    uri, missing = tracking.existing_store()
    if missing:
        raise SpotdiffError(f"--model {ref}: no MLflow store to look it up in ({missing} does not exist); "
                            "run from the repository that registered it, or set MLFLOW_TRACKING_URI")
    with tempfile.TemporaryDirectory(prefix="spotdiff-model-") as tmp:
        try:
            local = _fetch(ref, uri, tracking.registry_uri(uri), Path(tmp))
        except SpotdiffError:
            raise
        except Exception as exc:  # unknown model / alias / run, unreachable store
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise SpotdiffError(f"--model {ref}: cannot load it from MLflow at {tracking.redact_uri(uri)} "
                                f"({first}); check the name/alias (`spotdiff promote`, the MLflow UI) or "
                                "MLFLOW_TRACKING_URI") from None
        found = [local] if local.is_file() else sorted(local.rglob("*.pt"))
        if not found:
            raise SpotdiffError(f"--model {ref}: the MLflow artifact holds no .pt checkpoint")
        return load_model(found[0])


def _parse_models_uri(ref: str) -> tuple[str, str | None, str | None]:
    """models:/NAME@ALIAS | models:/NAME/VERSION → (name, alias, version)."""
    body = ref[len("models:/"):].strip("/")
    first, _, rest = body.partition("/")
    if "@" in first:
        name, alias = first.split("@", 1)
        if name and alias and not rest:
            return name, alias, None
    elif first and rest.isdigit():
        return first, None, rest
    raise SpotdiffError(f"--model {ref}: not a registry reference this tool reads; give {REFERENCE_FORMS}")


def _run_location(client, ref: str) -> str:
    """runs:/RUN_ID/PATH → a concrete URI: the run's logged model named PATH's first part (MLflow 3
    keeps logged models outside the run's artifacts), else PATH among the run's artifacts."""
    run_id, _, path = ref[len("runs:/"):].partition("/")
    if not run_id or not path.strip("/"):
        raise SpotdiffError(f"--model {ref}: give runs:/RUN_ID/PATH (e.g. runs:/<id>/model)")
    run = client.get_run(run_id)
    name, _, sub = path.strip("/").partition("/")
    token = None
    while True:
        page = client.search_logged_models(experiment_ids=[run.info.experiment_id],
                                           filter_string=f"name = '{name}'", page_token=token)
        for logged in page:
            if logged.source_run_id == run_id:
                return logged.artifact_location.rstrip("/") + (f"/{sub}" if sub else "")
        token = page.token
        if not token:
            return run.info.artifact_uri.rstrip("/") + "/" + path.strip("/")


def _fetch(ref: str, uri: str, registry_uri: str, tmp: Path) -> Path:
    """A local file or folder holding the checkpoint of an MLflow reference (see `load_reference`)."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=registry_uri)
    if ref.startswith("runs:/"):
        location = _run_location(client, ref)
    elif ref.startswith("models:/m-"):  # a logged model, by id
        location = client.get_logged_model(ref[len("models:/"):].strip("/")).artifact_location
    else:
        name, alias, version = _parse_models_uri(ref)
        mv = client.get_model_version_by_alias(name, alias) if alias else client.get_model_version(name, version)
        location = client.get_model_version_download_uri(name, mv.version)
    local = tracking.local_store_path(location)
    if local is not None:
        return local  # a local artifact store: read in place
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=location, dst_path=str(tmp)))


class CywsDetector(Detector):
    """The learned change detector (see the module docstring)."""

    name = "cyws"
    title = "CYWS"
    uses_model = True
    display_rule = "after NMS"

    def __init__(self, model: CYWS, device: str | torch.device | None = None, engine: str = "auto",
                 reference: str | Path | None = None) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.size = int(model.config["image_size"])
        # How the forward pass runs (`spotdiff.methods.engines`): auto = ONNX Runtime on the CPU,
        # eager on a GPU; built on first use (the ONNX export is cached per weights).
        self.engine_name = engine
        resolve_engine(engine, self.device)  # a bad name fails here, before any work
        self._engine = None
        self._reference = None if reference is None else str(reference)

    @property
    def engine(self):
        if self._engine is None:
            self._engine = make_engine(self.model, self.engine_name)
        return self._engine

    @classmethod
    def from_reference(cls, ref: str | Path, device: str | None = None, engine: str = "auto") -> "CywsDetector":
        """The detector for a checkpoint path or an MLflow reference (see `load_reference`)."""
        return cls(load_reference(ref), device=device, engine=engine, reference=ref)

    @classmethod
    def build(cls, params: Any = None, *, model: CYWS | str | Path | None = None, engine: str = "auto",
              device: str | None = None) -> "CywsDetector":
        """From a loaded model or a reference (`from_reference`); `params` is not used."""
        if model is None:
            raise SpotdiffError(f"method {cls.name}: needs a trained model; pass a checkpoint path or an "
                                f"MLflow reference ({REFERENCE_FORMS})")
        if isinstance(model, CYWS):
            return cls(model, device=device, engine=engine)
        return cls.from_reference(model, device=device, engine=engine)

    @torch.no_grad()
    def detect_batch(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[Result]:
        """Detect on many (A, B) pairs in one forward pass; boxes in each image's own pixels."""
        if not pairs:
            return []
        images_a = [a for a, _ in pairs]
        images_b = [b for _, b in pairs]
        batch_a = _to_input(images_a, self.size, self.device)
        batch_b = _to_input(images_b, self.size, self.device)
        out_a, out_b = self.engine(batch_a, batch_b)  # CYWS.forward's outputs, from the chosen engine
        dets_a, dets_b = self.model.decode(out_a), self.model.decode(out_b)
        results = []
        for img_a, img_b, (ba, sa), (bb, sb) in zip(images_a, images_b, dets_a, dets_b):
            (ha, wa), (hb, wb) = img_a.shape[:2], img_b.shape[:2]
            results.append((
                scale_boxes(ba.float().cpu().numpy(), wa / self.size, ha / self.size),
                sa.float().cpu().numpy().astype(np.float64),
                scale_boxes(bb.float().cpu().numpy(), wb / self.size, hb / self.size),
                sb.float().cpu().numpy().astype(np.float64),
            ))
        return results

    @torch.no_grad()
    def attention_grid(self, img_a: np.ndarray, img_b: np.ndarray) -> np.ndarray | None:
        """The deepest co-attention from A to B: float32 h×w×h×w (a query cell of A's feature grid,
        then the map over B's grid; each map sums to 1), or None for the NOAM ablation."""
        attn = self.model.attention_maps(_to_input([img_a], self.size, self.device),
                                         _to_input([img_b], self.size, self.device))
        if attn is None:
            return None
        return attn["a_to_b"][0].float().cpu().numpy()

    def attention_from(self, img_a: np.ndarray, img_b: np.ndarray, point_a: tuple[float, float]
                       ) -> np.ndarray | None:
        """Where the deepest co-attention looks in B from the point (x, y) of A: an h×w map over B
        (sums to 1), or None for the NOAM ablation."""
        a_to_b = self.attention_grid(img_a, img_b)
        if a_to_b is None:
            return None
        h, w = a_to_b.shape[:2]
        qx = int(np.clip(point_a[0] / img_a.shape[1] * w, 0, w - 1))
        qy = int(np.clip(point_a[1] / img_a.shape[0] * h, 0, h - 1))
        return a_to_b[qy, qx]

    def run(self, img_a: np.ndarray, img_b: np.ndarray, ignore_mask: np.ndarray | None = None,
            keep_maps: bool = False) -> PairDetections:
        """Detect on one pair; boxes lying mostly inside the ignore mask dropped (see the module doc)."""
        result = self.detect_batch([(img_a, img_b)])[0]
        a_to_b, method = a_to_b_homography(img_a, img_b)
        dets = PairDetections.from_tuple(result, (img_a.shape[1], img_a.shape[0]),
                                         (img_b.shape[1], img_b.shape[0]), paired=False,
                                         extras={"pairing": f"boxes matched across the pair after registration "
                                                            f"({method})"}, a_to_b=a_to_b)
        return dets.drop_ignored(ignore_mask)

    # -- the Detector interface ------------------------------------------------------------------

    def display(self, dets: PairDetections, top_k: int | None = None) -> PairDetections:
        """Each image's `top_k` (default `DISPLAY_TOP_K`) boxes after non-maximum suppression."""
        k = top_k or DISPLAY_TOP_K
        ba, sa = suppress(dets.boxes_a, dets.scores_a, top_k=k)
        bb, sb = suppress(dets.boxes_b, dets.scores_b, top_k=k)
        return PairDetections(ba, sa, bb, sb, dets.size_a, dets.size_b, a_to_b=dets.a_to_b)

    @property
    def reference(self) -> str | None:
        return self._reference

    def settings(self) -> dict[str, Any]:
        return {"engine": self.engine_name}

    def summary(self) -> str:
        return self.model.summary()

    def overlays(self, img_a: np.ndarray, img_b: np.ndarray, dets: PairDetections,
                 shown: PairDetections) -> list[Overlay]:
        """Co-attention: where the model looks in B from the centre of its top shown box in A."""
        if not len(shown.boxes_a):
            return []
        x1, y1, x2, y2 = shown.boxes_a[0]
        attention = self.attention_from(img_a, img_b, ((x1 + x2) / 2, (y1 + y2) / 2))
        if attention is None:
            return []
        return [Overlay("b", attention, "co-attention on B from A's box #1")]
