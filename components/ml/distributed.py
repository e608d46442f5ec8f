"""Training on several processes: torchrun's launch, the ranks' process group, and
which rank does what.

``train.nproc`` (or ``pretrain.nproc``) above 1 makes the stage's own command line
(``python -m components.train ...``, unchanged in ``dvc.yaml``) check its inputs and
then replace itself with ``torchrun --standalone --nproc-per-node N -m components.train
...`` (the same arguments). Each rank finds itself from torchrun's environment (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``), joins the process group (NCCL when it trains on a GPU,
one GPU a rank; gloo on the CPU) and trains on its share of every global batch
(par.training.Shard). Rank 0 alone tracks in MLflow and writes checkpoints and outputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from components.console import log
from components.errors import ComponentError
from par.training import Shard

PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training run (one rank of one when
    torchrun did not start it)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> World:
        """torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; a single process without them."""
        try:
            return cls(
                rank=int(os.environ.get("RANK", "0")),
                size=int(os.environ.get("WORLD_SIZE", "1")),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")),
            )
        except ValueError as exc:
            raise ComponentError(f"torchrun's RANK, WORLD_SIZE or LOCAL_RANK is not a number: {exc}") from None

    @property
    def leader(self) -> bool:
        """Rank 0: the one that logs to MLflow and writes checkpoints and outputs."""
        return self.rank == 0

    @property
    def shard(self) -> Shard:
        return Shard(rank=self.rank, world_size=self.size)


def launched() -> bool:
    """Whether torchrun (or another launcher of torch.distributed) started this process."""
    return "WORLD_SIZE" in os.environ


def uses_cuda(device: str) -> bool:
    """Whether a training device setting (``auto``, ``cpu``, ``cuda:1``) trains on a GPU."""
    return device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())


def check_world(section: str, nproc: int, device: str, world: World) -> None:
    """``<section>.nproc`` must be the number of processes this one runs among."""
    if world.size != nproc:
        how = (
            f"this process is one of {world.size} torchrun ranks"
            if world.size > 1
            else "this process was not started by torchrun (run the stage's command line: it launches torchrun)"
        )
        raise ComponentError(f"{section}.nproc is {nproc}, but {how}")
    if nproc > 1 and uses_cuda(device) and nproc > torch.cuda.device_count():
        raise ComponentError(
            f"{section}.nproc is {nproc}, but this machine has {torch.cuda.device_count()} GPUs (one a rank)"
        )


def launch(module: str, nproc: int, argv: list[str]) -> None:
    """Replace this process with torchrun running ``python -m <module> ARGV`` on ``nproc``
    ranks of this machine (it keeps this process's id, so a kill or a signal reaches it).
    torchrun gives each rank one thread unless ``OMP_NUM_THREADS`` or ``threads`` says otherwise."""
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
        "-m", module, *argv,
    ]  # fmt: skip
    log.info("launching %d ranks: %s", nproc, " ".join(command))
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os.execv(sys.executable, command)


def _die_with_parent() -> None:
    """End this rank when torchrun ends, even by SIGKILL (Linux): its ranks run in sessions
    of their own, so a kill of torchrun's process group would otherwise leave them training."""
    parent = os.getppid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # torchrun ended before the line above
        os._exit(1)


def start(world: World, device: str) -> None:
    """Join the run's process group (a no-op for a single process)."""
    if world.size == 1:
        return
    _die_with_parent()
    cuda = uses_cuda(device)
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(backend="nccl" if cuda else "gloo")
    if not world.leader:  # one rank's log is the run's log
        log.setLevel("WARNING")


def stop(world: World) -> None:
    """Leave the process group once every rank is done: the ranks meet at a barrier first,
    so that none destroys the group while rank 0 still writes its outputs. Without it, a
    2-process run once hung after rank 0 had written everything (the other rank had left
    long before), until the test stopped it 10 minutes later."""
    if world.size > 1 and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value``, on every rank."""
    if world.size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]
