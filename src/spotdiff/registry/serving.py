"""The served model: the trained CYWS logged to MLflow as a pyfunc ("models from code").

The served model takes `{"image_a": H×W×3 uint8, "image_b": H'×W'×3 uint8}` (RGB) and returns
`{"boxes_a": [[x1,y1,x2,y2],…], "scores_a": […], "boxes_b": …, "scores_b": …}` in each image's own
pixels (xyxy, x2/y2 exclusive). See docs/SERVING.md.
"""

from __future__ import annotations

import tempfile
import warnings
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Optional

from spotdiff.errors import SpotdiffError
from spotdiff.methods.learned import CywsDetector
from spotdiff.models.checkpoint import load_model

CHECKPOINT_ARTIFACT = "checkpoint"
MODEL_NAME_IN_RUN = "model"

# What the served model imports (besides spotdiff itself, which the serving environment must have
# installed: `pip install .` in this repo, or the Docker image). Pinned to the versions installed here.
_SERVING_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "numpy", "scipy", "pillow",
                          "opencv-python-headless", "scikit-image", "kornia", "pyyaml")


try:  # mlflow is a hard dependency, but keep `import spotdiff.registry` cheap to reason about.
    from mlflow.pyfunc import PythonModel as _PythonModel
except ImportError:  # pragma: no cover
    _PythonModel = object  # type: ignore[assignment,misc]


def _as_image(value: Any, name: str):
    import numpy as np

    arr = np.asarray(value)
    if arr.ndim == 4 and arr.shape[0] == 1:  # a batch of one
        arr = arr[0]
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise SpotdiffError(f"input {name}: expected an H×W×3 RGB image, got shape {tuple(arr.shape)}; "
                            "send {\"inputs\": {\"image_a\": [[[r,g,b],…],…], \"image_b\": …}}")
    if arr.dtype != np.uint8:
        arr = np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(arr)


def _as_list(x: Any) -> list:
    import numpy as np

    return np.asarray(x, dtype=np.float64).tolist()


# No type hints on `predict`: the input (a dict of two uint8 tensors) is validated by the TensorSpec
# signature given at logging; MLflow's type-hint validation has no form for it (it would warn at every import,
# on stderr, before a command's one-line error: silenced here, for this class only).
with warnings.catch_warnings(record=True):  # recorded and dropped (MLflow resets the filters inside)
    class CywsPyfuncModel(_PythonModel):  # type: ignore[misc,valid-type]
        """MLflow pyfunc wrapper: loads the logged checkpoint and runs `CywsDetector` on an image pair."""

        def load_context(self, context) -> None:
            model = load_model(context.artifacts[CHECKPOINT_ARTIFACT], map_location="cpu")
            model.eval()
            self._detector = CywsDetector(model)

        def predict(self, context, model_input, params: Optional[dict] = None):
            if not isinstance(model_input, dict) or not {"image_a", "image_b"} <= set(model_input):
                raise SpotdiffError("model input: expected a mapping with image_a and image_b")
            img_a = _as_image(model_input["image_a"], "image_a")
            img_b = _as_image(model_input["image_b"], "image_b")
            boxes_a, scores_a, boxes_b, scores_b = self._detector.detect(img_a, img_b)
            return {"boxes_a": _as_list(boxes_a), "scores_a": _as_list(scores_a),
                    "boxes_b": _as_list(boxes_b), "scores_b": _as_list(scores_b)}


MODEL_CODE = '''"""spotdiff CYWS change detector as an MLflow pyfunc (needs spotdiff installed)."""
import mlflow

from spotdiff.registry.serving import CywsPyfuncModel

mlflow.models.set_model(CywsPyfuncModel())
'''


def model_signature():
    """Two named uint8 tensors of shape (-1, -1, 3): the pair of RGB images, any sizes."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    inputs = Schema([TensorSpec(np.dtype("uint8"), (-1, -1, 3), "image_a"),
                     TensorSpec(np.dtype("uint8"), (-1, -1, 3), "image_b")])
    return ModelSignature(inputs=inputs)


def input_example(size: int = 64) -> dict:
    """A small deterministic pair: a grey image and the same image with one bright square."""
    import numpy as np

    a = np.full((size, size, 3), 96, dtype=np.uint8)
    b = a.copy()
    b[size // 4: size // 2, size // 4: size // 2] = 230
    return {"image_a": a, "image_b": b}


def pip_requirements() -> list[str]:
    """The serving dependencies, pinned to the installed versions (given explicitly: fast to log)."""
    reqs = []
    for dist in _SERVING_DISTRIBUTIONS:
        try:
            version = _metadata.version(dist)
        except _metadata.PackageNotFoundError:
            continue
        reqs.append(f"{dist}=={version.split('+')[0]}")
    return reqs


def log_pyfunc(checkpoint: Path):
    """Log `checkpoint` (our format) as the pyfunc model into the active run; returns its ModelInfo."""
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        # "Models from code": the model is this small script (copied into the logged model), not a
        # pickled object, so loading it unpickles nothing.
        code = Path(tmp) / "spotdiff_pyfunc.py"
        code.write_text(MODEL_CODE)
        return mlflow.pyfunc.log_model(
            name=MODEL_NAME_IN_RUN,
            python_model=str(code),
            artifacts={CHECKPOINT_ARTIFACT: str(Path(checkpoint).resolve())},
            signature=model_signature(),
            input_example=input_example(),
            pip_requirements=pip_requirements(),
        )
