"""The model's life in the MLflow registry: the served pyfunc (`serving`), where a version comes
from (`provenance`), when it becomes champion (`rule`) and the versions themselves (`versions`:
register, promote by hand, import a checkpoint made elsewhere).
"""

# Models logged before the package was split load `spotdiff.registry.CywsPyfuncModel`.
from spotdiff.registry.serving import CywsPyfuncModel

__all__ = ["CywsPyfuncModel"]
