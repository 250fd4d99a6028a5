"""What this machine can do, and the choices that follow from it (not from one machine's timings).

Defaults that depend on the hardware resolve here from capability flags, so the same `params.yaml`
picks the right thing on every CPU: bf16 autocast only where bf16 runs natively (a CUDA device that
supports it, or a CPU with `avx512_bf16` / AMX); everywhere else bf16 is emulated op by op and a
training step is many times slower than fp32 (BENCHMARKS.md, "Training step").

`resolve_precision` is a pure function of the flags, so every case is testable on any machine.
`capabilities()` reads the real machine. Two environment variables that restrict the kernels
PyTorch may use are honoured, so a capable CPU can stand in for a lesser one:
`ATEN_CPU_CAPABILITY=avx2` (ATen's vector kernels) and `ONEDNN_MAX_CPU_ISA=AVX2` (oneDNN's, which
run bf16 matmuls and convolutions).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

# The CPU flags that decide a default or explain a benchmark figure.
RELEVANT_CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")
NATIVE_BF16_CPU_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
BF16_PRECISIONS = ("bf16-mixed", "bf16-true")
# oneDNN ISA names (ONEDNN_MAX_CPU_ISA) that still allow its native bf16 kernels.
_ONEDNN_BF16_ISAS = ("AVX512_CORE_BF16", "AVX512_CORE_FP16", "AVX512_CORE_AMX", "AVX512_CORE_AMX_FP16",
                     "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16", "AVX10_2_512",
                     "AVX10_2_512_AMX_2", "ALL", "DEFAULT")


@dataclass(frozen=True)
class Capabilities:
    """The facts a default may depend on."""

    cpu_model: str = "unknown CPU"
    cpu_flags: frozenset[str] = field(default_factory=frozenset)  # of RELEVANT_CPU_FLAGS, as usable now
    cuda_device: str | None = None  # name of CUDA device 0, None without one
    cuda_bf16: bool = False  # that device runs bf16 natively

    @property
    def cpu_native_bf16(self) -> bool:
        return bool(self.cpu_flags & NATIVE_BF16_CPU_FLAGS)

    def line(self) -> str:
        """One line for logs and benchmark tables: the CPU model and its relevant flags."""
        flags = " ".join(f for f in RELEVANT_CPU_FLAGS if f in self.cpu_flags) or "none of " + "/".join(
            RELEVANT_CPU_FLAGS)
        gpu = f" | GPU {self.cuda_device} (bf16 {'native' if self.cuda_bf16 else 'no'})" if self.cuda_device else ""
        return f"CPU {self.cpu_model} | flags {flags} | bf16 {'native' if self.cpu_native_bf16 else 'emulated'}{gpu}"

    def as_dict(self) -> dict:
        return {"cpu": self.cpu_model, "cpu_flags": [f for f in RELEVANT_CPU_FLAGS if f in self.cpu_flags],
                "cpu_native_bf16": self.cpu_native_bf16, "gpu": self.cuda_device, "gpu_bf16": self.cuda_bf16}


def _cpuinfo() -> tuple[str, set[str]]:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:  # not Linux: no flags known, so nothing is assumed native
        return platform.processor() or platform.machine(), set()
    model = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")),
                 platform.processor() or platform.machine())
    flags_line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[1].split()) if ":" in flags_line else set()
    return model, flags


def restricted_flags(flags: set[str] | frozenset[str], environ: dict | os._Environ = os.environ) -> frozenset[str]:
    """`flags` less what ATEN_CPU_CAPABILITY / ONEDNN_MAX_CPU_ISA forbid PyTorch to use."""
    usable = set(flags)
    aten = environ.get("ATEN_CPU_CAPABILITY", "").strip().lower()
    if aten in ("avx2", "default"):
        usable -= {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
        if aten == "default":
            usable.discard("avx2")
    isa = environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    if isa and isa not in _ONEDNN_BF16_ISAS:
        usable -= {"avx512_bf16", "amx_bf16", "amx_tile"}
        if not isa.startswith("AVX512") and not isa.startswith("AVX10"):
            usable.discard("avx512f")
    return frozenset(usable)


def capabilities(with_cuda: bool = True) -> Capabilities:
    """This machine, as PyTorch may use it now (see `restricted_flags`)."""
    model, flags = _cpuinfo()
    cuda_device, cuda_bf16 = None, False
    if with_cuda:
        import torch

        if torch.cuda.is_available():
            cuda_device = torch.cuda.get_device_name(0)
            cuda_bf16 = bool(torch.cuda.is_bf16_supported())
    return Capabilities(model, restricted_flags(flags & set(RELEVANT_CPU_FLAGS)), cuda_device, cuda_bf16)


def resolve_precision(requested: str, on_gpu: bool, caps: Capabilities) -> tuple[str, str | None]:
    """(the Lightning precision to use, a one-line warning or None) for `train.precision`.

    "auto": bf16-mixed where bf16 is native to the device that trains (a bf16-capable CUDA GPU, or a
    CPU with avx512_bf16 / AMX), else 32-true. An explicit value is honoured; bf16 on a CPU that
    would emulate it comes with a warning that names the cost.
    """
    native = caps.cuda_bf16 if on_gpu else caps.cpu_native_bf16
    if requested == "auto":
        return ("bf16-mixed" if native else "32-true"), None
    if requested in BF16_PRECISIONS and not native:
        where = "this GPU" if on_gpu else f"this CPU ({caps.cpu_model}: no avx512_bf16 or AMX)"
        return requested, (f"train.precision {requested}: bf16 is emulated on {where}, so each step runs "
                           "several times slower than 32-true (up to 20x on an AVX2-only CPU); "
                           "set train.precision: auto")
    return requested, None
