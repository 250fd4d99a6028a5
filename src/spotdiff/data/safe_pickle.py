"""Restricted unpickling of the published `.npy` / `.pkl` files (COCO-Inpainted metadata, VIRAT boxes).

The authors' data sets store annotations as pickled object arrays and dicts. They come from a trusted
publisher, but a pickle can run arbitrary code when loaded, so we never call `pickle.load` or
`np.load(allow_pickle=True)` on them. Instead an `Unpickler` whose `find_class` only resolves the few
numpy names needed to rebuild an array (`_reconstruct`, `ndarray`, `dtype`, `scalar`) reads them, and
the result is then checked to be *plain*: dict / list / tuple / str / bytes / int / float / bool /
None / numpy scalars / ndarrays of numbers, bools, strings or (recursively) plain objects.
Anything else raises `SpotdiffError` naming the file.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from spotdiff.errors import SpotdiffError

# (module, name) pairs a numpy array / scalar pickle needs (`_frombuffer`: pickle protocol 5).
# numpy 1.x writes `numpy.core.*`, numpy 2.x `numpy._core.*`; both resolve to the installed numpy.
_NUMPY_NAMES = {"_reconstruct", "scalar", "ndarray", "dtype", "_frombuffer"}
_NUMPY_MODULES = {"numpy.core.multiarray", "numpy._core.multiarray", "numpy", "numpy.core.numeric",
                  "numpy._core.numeric"}
# Protocol-2 pickles written by Python 3 encode `bytes` as `_codecs.encode(str, "latin1")`.
_EXTRA = {("_codecs", "encode")}

_MAX_DEPTH = 64


def _numpy_multiarray() -> Any:
    try:
        from numpy._core import multiarray  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    return multiarray


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: str) -> np.ndarray:
    """What numpy's own `_frombuffer` does for protocol-5 pickles, for plain dtypes only."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise ValueError("object dtype in an out-of-band buffer")
    return np.frombuffer(buf, dtype=dtype).reshape(shape, order=order)


_mm = _numpy_multiarray()
# Resolved once: find_class hands out exactly these objects, never anything looked up by name.
_ALLOWED = {"_reconstruct": _mm._reconstruct, "scalar": _mm.scalar, "ndarray": np.ndarray,
            "dtype": np.dtype, "_frombuffer": _frombuffer}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, source: Path):
        super().__init__(file, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_MODULES and name in _NUMPY_NAMES:
            return _ALLOWED[name]
        if (module, name) in _EXTRA:
            import _codecs

            return _codecs.encode
        raise SpotdiffError(
            f"{self._source}: refusing to unpickle {module}.{name} (only plain numpy arrays, dicts, "
            "lists and numbers are allowed); the file is not the expected data — re-download it and "
            "check its SHA512SUMS")


def check_plain(obj: Any, source: Path | str, _depth: int = 0) -> None:
    """Raise `SpotdiffError` unless `obj` is built only of plain types (see the module doc)."""
    if _depth > _MAX_DEPTH:
        raise SpotdiffError(f"{source}: content nested deeper than {_MAX_DEPTH} levels; "
                            "not the expected data")
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, np.generic)):
        if isinstance(obj, np.generic) and obj.dtype.kind not in "biufcUSb?":
            raise SpotdiffError(f"{source}: unexpected numpy scalar of dtype {obj.dtype}; "
                                "not the expected data")
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            check_plain(key, source, _depth + 1)
            check_plain(value, source, _depth + 1)
        return
    if isinstance(obj, (list, tuple)):
        for value in obj:
            check_plain(value, source, _depth + 1)
        return
    if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
        if obj.dtype.kind == "O":
            for value in obj.ravel():
                check_plain(value, source, _depth + 1)
            return
        if obj.dtype.kind in "biufcUS" and obj.dtype.names is None:
            return
        raise SpotdiffError(f"{source}: unexpected array dtype {obj.dtype}; not the expected data")
    raise SpotdiffError(f"{source}: unexpected object of type {type(obj).__name__}; not the expected data")


def _unpickle(data: bytes, source: Path) -> Any:
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
    except SpotdiffError:
        raise
    except Exception as exc:  # truncated / corrupt pickle
        raise SpotdiffError(f"{source}: cannot read the pickled content ({type(exc).__name__}: {exc}); "
                            "the file is damaged — re-download it") from None
    check_plain(obj, source)
    return obj


def load_pickle_plain(path: str | Path) -> Any:
    """Load a `.pkl` file holding plain data (dicts, lists, numbers, numpy arrays) without running code."""
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: file not found; check the data set folder")
    return _unpickle(path.read_bytes(), path)


def load_npy_plain(path: str | Path) -> np.ndarray:
    """Load a `.npy` file; object arrays are unpickled with the restricted unpickler and checked plain.

    Numeric arrays are read with `allow_pickle=False` as usual.
    """
    path = Path(path)
    if not path.is_file():
        raise SpotdiffError(f"{path}: file not found; check the data set folder")
    with path.open("rb") as fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                shape, fortran, dtype = np.lib.format._read_array_header(fh, version)
        except SpotdiffError:
            raise
        except Exception as exc:
            raise SpotdiffError(f"{path}: not a .npy file ({exc}); re-download or regenerate it") from None
        if not dtype.hasobject:
            fh.seek(0)
            try:
                arr = np.load(fh, allow_pickle=False)
            except Exception as exc:
                raise SpotdiffError(f"{path}: cannot read the array ({exc}); the file is damaged") from None
            check_plain(arr, path)
            return arr
        payload = fh.read()
    obj = _unpickle(payload, path)
    if not isinstance(obj, np.ndarray):
        # np.save pickles the array itself; anything else is not what numpy wrote.
        raise SpotdiffError(f"{path}: the pickled payload is a {type(obj).__name__}, not an array; "
                            "not the expected data")
    if tuple(obj.shape) != tuple(shape):
        raise SpotdiffError(f"{path}: header shape {shape} does not match the content {obj.shape}; "
                            "the file is damaged")
    return obj
