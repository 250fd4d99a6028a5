"""Hardware-dependent defaults resolve from capability flags, never from one machine's timings."""

from __future__ import annotations

import pytest
import torch

from spotdiff.machine import Capabilities, capabilities, resolve_precision, restricted_flags
from spotdiff.params import Params

ZEN3 = Capabilities("AMD EPYC Zen 3", frozenset({"avx2"}))
ICE_LAKE = Capabilities("Intel Xeon Ice Lake", frozenset({"avx2", "avx512f"}))
ZEN4 = Capabilities("AMD EPYC Zen 4", frozenset({"avx2", "avx512f", "avx512_bf16"}))
SAPPHIRE = Capabilities("Intel Xeon Sapphire Rapids", frozenset({"avx2", "avx512f", "amx_bf16", "amx_tile"}))
H100 = Capabilities("any CPU", frozenset({"avx2"}), cuda_device="NVIDIA H100", cuda_bf16=True)
V100 = Capabilities("any CPU", frozenset({"avx2", "avx512f", "avx512_bf16"}), cuda_device="Tesla V100",
                    cuda_bf16=False)


@pytest.mark.parametrize("caps,on_gpu,expected", [
    (ZEN3, False, "32-true"),        # AVX2 only: bf16 would be emulated (~20x slower per step)
    (ICE_LAKE, False, "32-true"),    # AVX-512 without avx512_bf16: still emulated
    (ZEN4, False, "bf16-mixed"),
    (SAPPHIRE, False, "bf16-mixed"),  # AMX
    (H100, True, "bf16-mixed"),
    (V100, True, "32-true"),         # the GPU trains, so the CPU's bf16 does not count
    (H100, False, "32-true"),        # a GPU that does not train does not count either
])
def test_auto_is_bf16_only_where_it_is_native(caps, on_gpu, expected):
    assert resolve_precision("auto", on_gpu, caps) == (expected, None)


def test_explicit_precision_is_honoured_and_emulated_bf16_warns():
    assert resolve_precision("32-true", False, ZEN4) == ("32-true", None)
    assert resolve_precision("bf16-mixed", False, ZEN4) == ("bf16-mixed", None)
    precision, warning = resolve_precision("bf16-mixed", False, ZEN3)
    assert precision == "bf16-mixed"
    assert "emulated" in warning and "AMD EPYC Zen 3" in warning and "train.precision: auto" in warning
    assert "\n" not in warning
    assert resolve_precision("bf16-true", True, V100)[1] is not None


def test_kernel_restrictions_count_as_missing_flags():
    flags = frozenset({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    assert restricted_flags(flags, {}) == flags
    assert restricted_flags(flags, {"ATEN_CPU_CAPABILITY": "avx2"}) == {"avx2"}
    assert restricted_flags(flags, {"ONEDNN_MAX_CPU_ISA": "AVX2"}) == {"avx2"}
    assert restricted_flags(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE"}) == {"avx2", "avx512f"}
    assert restricted_flags(flags, {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_BF16"}) == flags


def test_this_machine_never_gets_emulated_bf16(monkeypatch):
    """Whatever CPU runs the suite: auto picks bf16 only if torch's own CPU probe (a second source,
    the cpuinfo library rather than /proc/cpuinfo) says bf16 instructions are there."""
    for var in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA"):
        monkeypatch.delenv(var, raising=False)
    caps = capabilities(with_cuda=False)
    precision, warning = resolve_precision("auto", False, caps)
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert warning is None
    assert precision == ("bf16-mixed" if native else "32-true"), caps.line()
    assert caps.cpu_model in caps.line()


def test_train_stage_passes_the_resolved_precision_to_lightning(capsys):
    from spotdiff.stages.train import _trainer_kwargs

    params = Params()
    assert params.train.precision == "auto"
    assert _trainer_kwargs(params, ZEN3)["precision"] == "32-true"
    assert _trainer_kwargs(params, ZEN4)["precision"] == "bf16-mixed"
    forced = params.model_copy(update={"train": params.train.model_copy(update={"precision": "bf16-mixed"})})
    assert _trainer_kwargs(forced, ZEN3)["precision"] == "bf16-mixed"
    err = capsys.readouterr().err
    assert err.count("spotdiff: warning: train.precision bf16-mixed: bf16 is emulated") == 1
