"""How many threads the trainer uses (`train.num_threads`; 0 = this machine's physical cores)."""

from __future__ import annotations

import os

import torch

from spotdiff.params import TrainParams

try:
    import psutil
except ImportError:  # pragma: no cover - psutil comes with the requirements
    psutil = None


def physical_cores() -> int:
    """Physical CPU cores this process may run on (hyper-threads not counted)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        allowed = os.cpu_count() or 1
    if psutil is None:
        return allowed
    physical = psutil.cpu_count(logical=False) or allowed
    logical = psutil.cpu_count(logical=True) or allowed
    per_core = max(1, logical // physical)
    return max(1, allowed // per_core)


def apply_threads(train_params: TrainParams) -> int:
    """Set the trainer's intra-op threads (`train.num_threads`; 0 = the physical cores less one per
    loader worker, at least 1); returns the count.

    DataLoader workers run one thread each (torch sets it in every worker); an OpenMP thread that
    shares its core with a worker stalls every parallel region of the step, so 0 leaves them a core.
    """
    threads = train_params.num_threads or max(1, physical_cores() - train_params.num_workers)
    torch.set_num_threads(threads)
    return threads
