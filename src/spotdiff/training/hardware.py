"""Is `train`'s Lightning setup possible on this machine? Checked before Lightning starts.

Lightning finds out late and loudly: `accelerator: gpu` without a GPU is a traceback, `devices: 64`
on a CPU spawns 64 processes that wait on each other, `num_nodes: 2` waits for a node that never
comes, and an unknown strategy is a MisconfigurationException. `check_hardware` turns each into one
`SpotdiffError` line naming the key and what this machine has.
"""

from __future__ import annotations

import os

import torch

from spotdiff.errors import SpotdiffError
from spotdiff.params import TrainParams

# Environment variables that mean a launcher (torchrun, SLURM, Lightning's own) set up several nodes.
_CLUSTER_ENV = ("WORLD_SIZE", "SLURM_NTASKS", "NODE_RANK", "MASTER_ADDR")


def cpu_count() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def available_strategies() -> list[str]:
    from pytorch_lightning.strategies import StrategyRegistry

    return ["auto", *sorted(StrategyRegistry.available_strategies())]


def check_hardware(t: TrainParams, source: str = "params.yaml") -> None:
    """Raise SpotdiffError when `t.accelerator`, `t.devices`, `t.num_nodes` or `t.strategy` cannot run
    here; `source` names the params file in the message."""
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    accelerator = "gpu" if t.accelerator == "cuda" else t.accelerator
    if accelerator == "gpu" and gpus == 0:
        raise SpotdiffError(f"{source}: train.accelerator is {t.accelerator} but this machine has no "
                            "CUDA GPU that torch can use; set train.accelerator: cpu (or auto)")
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and gpus > 0)
    have, unit = (gpus, "CUDA GPU(s)") if on_gpu else (cpu_count(), "CPU(s)")
    if t.devices != "auto" and t.devices > have:
        raise SpotdiffError(f"{source}: train.devices is {t.devices} but this machine has {have} {unit} "
                            f"for it; set train.devices to at most {have} (or auto)")
    if t.num_nodes > 1 and not any(k in os.environ for k in _CLUSTER_ENV):
        raise SpotdiffError(f"{source}: train.num_nodes is {t.num_nodes} but no multi-node launcher "
                            "(torchrun, SLURM) set this run up; set train.num_nodes: 1 or launch it from one")
    strategies = available_strategies()
    if t.strategy not in strategies:
        common = [s for s in strategies if "find_unused" not in s and "offload" not in s]
        raise SpotdiffError(f"{source}: train.strategy {t.strategy!r} is not a Lightning strategy; use one "
                            f"of {', '.join(common)}")
    if t.strategy.startswith("deepspeed"):
        try:
            import deepspeed  # noqa: F401
        except ImportError:
            raise SpotdiffError(f"{source}: train.strategy {t.strategy} needs the deepspeed package, "
                                "which is not installed; use auto or ddp") from None
