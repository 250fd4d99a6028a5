"""SSIM maps, the pixel-wise method's similarity measure: two back-ends with the same numbers.

- `ssim_map`: torch, one grouped separable convolution over the five local moments (runs on a GPU);
- `ssim_map_cv2`: OpenCV's SIMD separable filter, the CPU fast path (~10× torch's depthwise
  convolution on a CPU); same kernel, same border rule, same formula;
- `ssim_map_pyramid`: the map at every 2nd pixel from every pixel's statistics (`pyrDown` plus a
  short filter at the half resolution), for large frames.

Gaussian window (`sigma`, truncated at `TRUNCATE` σ like scikit-image), population covariance,
borders reflected like scikit-image (scipy "reflect"). `Scratch` holds reusable full-resolution
arrays, one set per thread.
"""

from __future__ import annotations

import functools
import threading

import numpy as np

TRUNCATE = 3.5  # Gaussian window radius in sigmas (scikit-image's default)


def gaussian_kernel1d(sigma: float, truncate: float = TRUNCATE):
    import torch

    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


@functools.lru_cache(maxsize=16)
def gaussian_taps(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """`gaussian_kernel1d` as a float32 numpy array, cached (the OpenCV paths ask for it every call)."""
    taps = gaussian_kernel1d(sigma, truncate).numpy().astype(np.float32)
    taps.flags.writeable = False
    return taps


def _symmetric_pad(t, r: int):
    """Half-sample symmetric padding (d c b a | a b c d), i.e. scipy's / OpenCV's "reflect"."""
    import torch

    h, w = t.shape[-2:]
    if r > min(h, w):  # tiny images: clamp instead
        import torch.nn.functional as F
        return F.pad(t, (r, r, r, r), mode="replicate")
    t = torch.cat([t[..., :, :r].flip(-1), t, t[..., :, w - r:].flip(-1)], dim=-1)
    return torch.cat([t[..., :r, :].flip(-2), t, t[..., h - r:, :].flip(-2)], dim=-2)


def _ssim_from_moments(mx, my, exx, eyy, exy, data_range: float):
    """SSIM from the five filtered moments (works on torch tensors and numpy arrays alike)."""
    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mxy = mx * my
    mx2 = mx * mx
    my2 = my * my
    num = (2 * mxy + c1) * (2 * (exy - mxy) + c2)
    den = (mx2 + my2 + c1) * ((exx - mx2) + (eyy - my2) + c2)
    return num / den


def ssim_map(x, y, sigma: float = 1.5, data_range: float = 1.0, truncate: float = TRUNCATE):
    """Per-pixel SSIM of two N×1×H×W float tensors (same device), Gaussian window, population covariance.

    The five local statistics (μx, μy, E[x²], E[y²], E[xy]) are filtered in one grouped separable
    convolution over an N×5×H×W stack. Borders are reflected like scikit-image (scipy "reflect").
    """
    import torch
    import torch.nn.functional as F

    k = gaussian_kernel1d(sigma, truncate).to(device=x.device, dtype=x.dtype)
    r = (k.numel() - 1) // 2
    stack = _symmetric_pad(torch.cat([x, y, x * x, y * y, x * y], dim=1), r)
    if stack.device.type == "cpu":  # the CPU depthwise kernels are much faster channels-last
        stack = stack.contiguous(memory_format=torch.channels_last)
    kh = k.view(1, 1, 1, -1).expand(5, 1, 1, -1).contiguous()
    kv = k.view(1, 1, -1, 1).expand(5, 1, -1, 1).contiguous()
    f = F.conv2d(F.conv2d(stack, kh, groups=5), kv, groups=5)
    return _ssim_from_moments(*f.unbind(dim=1), data_range=data_range).unsqueeze(1)


def ssim_map_cv2(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, data_range: float = 1.0,
                 truncate: float = TRUNCATE) -> np.ndarray:
    """The same SSIM map as `ssim_map` for two H×W float32 numpy arrays, filtered with OpenCV.

    The CPU fast path: OpenCV's SIMD separable filter is ~10× faster than torch's depthwise
    convolution on a CPU. Same kernel, same border rule, same formula.
    """
    import cv2

    k = gaussian_taps(sigma, truncate)
    x = np.ascontiguousarray(x, dtype=np.float32)
    y = np.ascontiguousarray(y, dtype=np.float32)

    def blur(img: np.ndarray) -> np.ndarray:
        return cv2.sepFilter2D(img, cv2.CV_32F, k, k, borderType=cv2.BORDER_REFLECT)

    # E[x²] + E[y²] is one filter of x² + y² (the filter is linear; only the sum is used).
    sq = cv2.multiply(x, x)
    cv2.accumulateSquare(y, sq)                         # x² + y²
    return _ssim_from_filtered_cv2(blur(x), blur(y), blur(cv2.multiply(x, y)), blur(sq), data_range)


def _ssim_from_filtered_cv2(mx: np.ndarray, my: np.ndarray, exy: np.ndarray, esq: np.ndarray,
                            data_range: float) -> np.ndarray:
    """`_ssim_from_moments` in OpenCV's element-wise ops, in place (the inputs are overwritten), fused
    where one op does two steps: these maps are memory-bound, every pass and every temporary costs as
    much as the maths. `esq` is the filtered x² + y²."""
    import cv2

    c1 = (0.01 * data_range) ** 2
    c2 = (0.03 * data_range) ** 2
    mxy2 = cv2.multiply(mx, my, scale=2.0)              # 2μxμy
    cv2.addWeighted(exy, 2.0, mxy2, -1.0, c2, dst=exy)  # 2σxy + C2
    cv2.add(mxy2, c1, dst=mxy2)                         # 2μxμy + C1
    cv2.multiply(mxy2, exy, dst=mxy2)                   # numerator
    cv2.multiply(mx, mx, dst=mx)
    cv2.accumulateSquare(my, mx)                        # μx² + μy²
    cv2.addWeighted(esq, 1.0, mx, -1.0, c2, dst=esq)    # σx² + σy² + C2
    cv2.add(mx, c1, dst=mx)                             # μx² + μy² + C1
    cv2.multiply(mx, esq, dst=mx)                       # denominator
    cv2.divide(mxy2, mx, dst=mxy2)
    return mxy2


@functools.lru_cache(maxsize=8)
def pyramid_kernel(sigma: float, truncate: float = TRUNCATE) -> np.ndarray:
    """Taps c (float32, odd length, summing to 1) such that OpenCV's `pyrDown` (the 5-tap binomial
    [1 4 6 4 1]/16, then every 2nd pixel) followed by c at the half resolution is the closest, in
    least squares, to the Gaussian window of `sigma` (truncated like `gaussian_kernel1d`) sampled at
    every 2nd pixel. For σ = 1.5: 3 taps, each 1-D weight within 0.006 of the exact one (peak 0.27)."""
    r = int(truncate * sigma + 0.5)
    x = np.arange(-r, r + 1)
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    half = max(1, int(round(sigma)))  # taps either side at the half resolution
    reach = max(r, 2 * half + 2)
    binomial = np.array([1, 4, 6, 4, 1]) / 16.0
    composite = np.zeros((2 * reach + 1, 2 * half + 1))  # full-res offset × half-res tap
    for j in range(-half, half + 1):
        for m in range(-2, 3):
            composite[2 * j + m + reach, j + half] += binomial[m + 2]
    target = np.zeros(2 * reach + 1)
    target[reach - r:reach + r + 1] = g
    # Non-negative taps (a negative one can make a local variance negative and SSIM explode) that sum
    # to 1 (a heavily weighted extra equation: flat images keep their level).
    from scipy.optimize import nnls

    c = nnls(np.vstack([composite, 100.0 * np.ones(2 * half + 1)]), np.append(target, 100.0))[0]
    while len(c) > 1 and c[0] == 0 and c[-1] == 0:
        c = c[1:-1]
    return (c / c.sum()).astype(np.float32)


def ssim_map_pyramid(x: np.ndarray, y: np.ndarray, sigma: float = 1.5, data_range: float = 1.0,
                     scratch: Scratch | None = None) -> np.ndarray:
    """The SSIM map of two H×W float32 images at every 2nd pixel (rows and columns 0, 2, 4, ...):
    a ⌈H/2⌉×⌈W/2⌉ map whose local statistics still come from every pixel. uint8 images (grey levels,
    `data_range` 255) are read as such: the squares and products are formed from the bytes.

    The five moments' Gaussian filtering is split into OpenCV's `pyrDown` (binomial blur + every 2nd
    pixel, a quarter of the output) and a short filter at the half resolution (`pyramid_kernel`):
    ~4× less filtering and element-wise work than `ssim_map_cv2` then subsampling, for a window
    within 1 % of the Gaussian. Only x² + y² and xy are formed at full resolution, in `scratch`.
    """
    import cv2

    scratch = scratch or Scratch()
    k = pyramid_kernel(float(sigma))

    def down(img: np.ndarray) -> np.ndarray:
        small = cv2.pyrDown(img, borderType=cv2.BORDER_REFLECT)
        return cv2.sepFilter2D(small, cv2.CV_32F, k, k, dst=small, borderType=cv2.BORDER_REFLECT)

    sq = cv2.multiply(x, x, dst=scratch.get("ssim_sq", x.shape, np.float32), dtype=cv2.CV_32F)
    cv2.accumulateSquare(y, sq)                         # x² + y²
    xy = cv2.multiply(x, y, dst=scratch.get("ssim_xy", x.shape, np.float32), dtype=cv2.CV_32F)
    if x.dtype == np.uint8:  # exact integers in float32
        np.copyto(scratch.get("ssim_x", x.shape, np.float32), x)
        np.copyto(scratch.get("ssim_y", y.shape, np.float32), y)
        x, y = scratch.arrays["ssim_x"], scratch.arrays["ssim_y"]
    return _ssim_from_filtered_cv2(down(x), down(y), down(xy), down(sq), data_range)


class Scratch(threading.local):
    """Reusable scratch arrays for the full-resolution passes, one set per thread.

    A fresh multi-megabyte array costs a page fault per 4 kB page on its first write — at 1024² as
    much time as the arithmetic on it (measured: the SSIM map 19 ms with fresh arrays, 8 ms reused).
    Arrays handed to a caller are never scratch arrays."""

    def __init__(self) -> None:
        self.arrays: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        arr = self.arrays.get(name)
        if arr is None or arr.shape != tuple(shape) or arr.dtype != dtype:
            arr = self.arrays[name] = np.empty(shape, dtype)
        return arr
