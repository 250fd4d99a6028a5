"""Sharding a stage over the processes of a `torch.distributed` launch: the inpaint and evaluate stages.

The same engine as training (Lightning DDP is a `torch.distributed` launch): torchrun starts
`devices` processes on each of `num_nodes` machines, each with env WORLD_SIZE, RANK and LOCAL_RANK.
A stage run inside such a launch joins it (`joined()`: a gloo process group) and does only its
shard of the work: unit `u` (an inpaint chunk, an evaluate batch) belongs to rank `u % WORLD_SIZE`,
the units being cut exactly as a single process cuts them, so every unit's numbers are the ones a
single process computes. Rank 0 then merges after a barrier, in the single-process order.

Two ways in, one code path:
- params only: `inpaint.devices: 8` (+ `num_nodes`) makes `spotdiff inpaint` launch itself through
  torchrun (`launch`); with `num_nodes > 1` every node runs the same command with MASTER_ADDR,
  MASTER_PORT and NODE_RANK set (as for Lightning without a cluster manager);
- an outer launch: `torchrun --nproc_per_node 8 -m spotdiff.cli inpaint ...` (or SLURM's srun with
  the same env) — the stage sees WORLD_SIZE and joins; the params' `devices` is then not looked at.

Coordination uses gloo even on GPUs: the processes exchange no tensors, only barriers and a one-time
gather of small CPU objects (evaluate's boxes), which gloo does without a copy to a GPU. Each
process computes on its own GPU (`torch.cuda.set_device(LOCAL_RANK)`).
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

from spotdiff.errors import SpotdiffError

# Barriers wait for the slowest shard (a resumed shard may have hours left when the others have
# none): gloo's 30-minute default would fail a long run that is merely unbalanced.
BARRIER_TIMEOUT = timedelta(hours=48)
# After a failure, how long a process that has left the group stays alive, so that the others
# (which learn of it when it leaves) print their own line before torchrun ends the launch.
PEER_REPORT_S = 1.0


@dataclass(frozen=True)
class Shard:
    """This process's place in a launch (rank 0 of 1 outside one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def owns(self, unit: int) -> bool:
        """Unit `unit` (0, 1, ...) is this shard's: round robin, the same for every run."""
        return unit % self.world_size == self.rank

    def tag(self) -> str:
        """" [rank r/w]" for progress bars and messages; empty outside a launch."""
        return f" [rank {self.rank}/{self.world_size}]" if self.distributed else ""

    def barrier(self) -> None:
        if self.distributed:
            import torch.distributed as dist

            with self._peers_alive():
                dist.barrier()

    def gather(self, obj: Any) -> list | None:
        """Every rank's `obj`, in rank order, on rank 0 (None elsewhere); [obj] outside a launch."""
        if not self.distributed:
            return [obj]
        import torch.distributed as dist

        out: list | None = [None] * self.world_size if self.is_main else None
        with self._peers_alive():
            dist.gather_object(obj, out, dst=0)
        return out

    @contextmanager
    def _peers_alive(self) -> Iterator[None]:
        """A collective that fails because another process died is one line, not a traceback: the
        process that died has printed why."""
        try:
            yield
        except RuntimeError:  # torch.distributed.DistBackendError and gloo's "connection closed"
            raise SpotdiffError(f"process {self.rank}: lost the other processes of the launch (one "
                                "stopped; its own message says why)") from None


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise SpotdiffError(f"env {name}={value!r}: not an integer; it is set by torchrun (unset it to "
                            "run one process)") from None


def shard_from_env() -> Shard:
    """The launch this process is in, from env WORLD_SIZE / RANK / LOCAL_RANK (torchrun's)."""
    world = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local = _env_int("LOCAL_RANK", rank)
    if world < 1 or not 0 <= rank < world:
        raise SpotdiffError(f"env RANK={rank}, WORLD_SIZE={world}: not a rank of the launch; "
                            "start the processes with torchrun")
    return Shard(rank, world, local)


@contextmanager
def joined() -> Iterator[Shard]:
    """This process's shard; inside a launch of more than one process, with the gloo group joined
    (left again on exit when this call joined it)."""
    shard = shard_from_env()
    if not shard.distributed:
        yield shard
        return
    import torch
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        if torch.cuda.is_available():
            torch.cuda.set_device(shard.local_rank % torch.cuda.device_count())
        dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
    try:
        yield shard
    except BaseException:
        if owned:  # leave only at exit, after the caller has printed why this process stopped
            atexit.register(_leave_after_failure)
        raise
    if owned:
        dist.destroy_process_group()


def _leave_after_failure() -> None:
    """Leave the group of a failed launch once this process's own message is out (the others then
    fail their collective and print theirs), and give them PEER_REPORT_S to do so: torchrun stops
    every process as soon as one has exited. The group's own errors add nothing here."""
    import torch.distributed as dist

    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass
    time.sleep(PEER_REPORT_S)


def in_launch() -> bool:
    """True inside a process that torchrun started."""
    return "WORLD_SIZE" in os.environ


def wants_launch(devices: int, num_nodes: int) -> bool:
    """True when the params ask for more than one process and this process is not in a launch yet."""
    return devices * num_nodes > 1 and not in_launch()


PAIRS_PER_PROCESS = 100  # `devices: auto` starts no process for fewer test pairs than this


def auto_devices(pairs: int, cores: int) -> int:
    """`evaluate.devices: auto`: one process per CUDA GPU, or per physical core (`cores`) without one,
    and at most one per PAIRS_PER_PROCESS pairs of work (a process takes seconds to start)."""
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else cores
    return max(1, min(have, pairs // PAIRS_PER_PROCESS))


def _check_devices(stage: str, devices: int) -> None:
    """More processes per node than this node has GPUs (or CPUs, without a GPU) only wait on each
    other: one line instead."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    have, unit = (gpus, "CUDA GPU(s)") if gpus else (cpus, "CPU(s)")
    if devices > have:
        raise SpotdiffError(f"params: {stage}.devices is {devices} but this machine has {have} {unit} "
                            f"for it; set {stage}.devices to at most {have}")


def launch(stage: str, args: list[str], devices: int, num_nodes: int) -> None:
    """Run `spotdiff <args>` as `devices` processes on this node (one of `num_nodes`) through torchrun
    and wait; SpotdiffError when a process failed (its own message is printed above)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    _check_devices(stage, devices)
    argv = [f"--nproc_per_node={devices}", f"--nnodes={num_nodes}", "--max_restarts=0"]
    if num_nodes == 1:
        argv.append("--standalone")
    else:
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK") if not os.environ.get(v)]
        if missing:
            raise SpotdiffError(f"params: {stage}.num_nodes is {num_nodes} but env {', '.join(missing)} "
                                "is not set; run the same command on every node with MASTER_ADDR, "
                                "MASTER_PORT and NODE_RANK set (docs/SCALE-OUT.md)")
        argv += [f"--node_rank={os.environ['NODE_RANK']}", f"--master_addr={os.environ['MASTER_ADDR']}",
                 f"--master_port={os.environ['MASTER_PORT']}"]
    argv += ["-m", "spotdiff.cli", *args]
    # torchrun sets 1 thread per process (with a warning) unless told; share this node's cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // devices)))
    sys.stdout.flush()
    agent_log = logging.getLogger("torch.distributed.elastic")
    level = agent_log.level
    agent_log.setLevel(logging.CRITICAL)  # its notes on a failure repeat what the message below says
    try:
        run(parse_args(argv))
    except ChildFailedError as exc:
        # A process killed mid-way leaves its progress bar without a newline on the shared stderr:
        # end that line, so the error below starts a line of its own.
        sys.stderr.write("\n")
        sys.stderr.flush()
        failed = ", ".join(str(rank) for rank in sorted(exc.failures))
        raise SpotdiffError(f"{stage}: process(es) {failed} of {devices * num_nodes} failed (messages "
                            "above); fix the cause and rerun: the work finished so far is kept") from None
    finally:
        agent_log.setLevel(level)


__all__ = ["Shard", "shard_from_env", "joined", "wants_launch", "launch", "BARRIER_TIMEOUT"]
