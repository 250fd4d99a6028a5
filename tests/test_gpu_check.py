"""benchmarks/gpu_check.sh: ready to run on a lent GPU; on a machine without CUDA it skips and exits 0."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script measures (minutes)")
def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path)}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh")], env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "gpu_check: skipped: no CUDA device" in r.stdout
    assert "flags" in r.stdout  # the machine line names the CPU's flags
    assert not (tmp_path / "gpu_check.json").exists()  # nothing measured, nothing written
