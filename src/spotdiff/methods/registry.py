"""The registry of change-detection methods: name → Detector class, and `build_detector`.

The only place that maps a method's name to its code. The names themselves are
`spotdiff.params.METHOD_NAMES` (the params schema needs them without importing torch); each
Detector class carries its own `name`, and importing this module fails when the two disagree.
`spotdiff detect`, the evaluate stage and the CLI look a method up here by the name the user or
params.yaml gives, then use the `Detector` interface.
"""

from __future__ import annotations

from typing import Any

from spotdiff.errors import SpotdiffError
from spotdiff.methods.base import Detector
from spotdiff.methods.learned import CywsDetector, is_registry_reference
from spotdiff.methods.pixelwise import SsimDetector
from spotdiff.params import METHOD_NAMES

# name → factory (the class; `Detector.build` makes one), in METHOD_NAMES's order.
METHODS: dict[str, type[Detector]] = {cls.name: cls for cls in (SsimDetector, CywsDetector)}
if tuple(METHODS) != METHOD_NAMES:
    raise ImportError(f"spotdiff.methods.registry: the Detector classes are named {tuple(METHODS)}, "
                      f"spotdiff.params.METHOD_NAMES is {METHOD_NAMES}; make them agree")


def method_class(name: str, what: str = "method") -> type[Detector]:
    """The Detector class registered as `name`; one-line SpotdiffError listing the known names
    (`what` names the setting it came from, e.g. "--method")."""
    try:
        return METHODS[name]
    except (KeyError, TypeError):
        raise SpotdiffError(f"{what}: unknown method {name!r}; use one of {', '.join(METHODS)}") from None


def model_methods() -> list[str]:
    """The names of the methods that need a trained model."""
    return [name for name, cls in METHODS.items() if cls.uses_model]


def build_detector(name: str, params: Any = None, *, model: Any = None, engine: str = "auto",
                   device: str | None = None) -> Detector:
    """The detector `name` for `params` (Params, or the method's own section: SsimParams).

    `model` (methods with `uses_model`): a loaded CYWS, a checkpoint path or an MLflow reference
    (models:/NAME@ALIAS, models:/NAME/VERSION, runs:/RUN_ID/PATH); `engine`: how a model's forward
    pass runs (`spotdiff.methods.engines`); `device`: torch device (default: CUDA when available).
    """
    return method_class(name).build(params, model=model, engine=engine, device=device)


__all__ = ["METHODS", "build_detector", "is_registry_reference", "method_class", "model_methods"]
