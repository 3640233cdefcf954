"""Data-parallel meta-training over the processes torchrun starts (gloo on CPU, nccl on CUDA).

    torchrun --standalone --nproc_per_node=2 -m metarec.cli train hydra.run.dir=outputs/ddp algo=maml
    torchrun --nnodes=2 --nproc_per_node=4 --rdzv_backend=c10d --rdzv_endpoint=HOST:29500 -m metarec.cli train ...

Every rank draws the same global meta-batch from the same seeded generator and keeps its slice of
tasks; the meta-gradients are averaged across ranks before each optimizer step, so N ranks take the
same steps as one process with the whole meta-batch (trainer.meta_batch_size is the global size and
must be a multiple of N). All ranks need the same hydra.run.dir: rank 0 writes the run folder, the
others write to a scratch folder (Hydra itself writes the same .hydra/ files from every rank). Every
rank validates (identical weights give identical numbers), so all ranks stop at the same step.
"""
from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import Tensor

from metarec.errors import UserError
from metarec.tasks import TaskBatch

log = logging.getLogger("metarec")


def setup(device: torch.device | None = None) -> tuple[int, int]:
    """(rank, world size) from torchrun's RANK / WORLD_SIZE / LOCAL_RANK; (0, 1) for a plain run.

    Joins the process group (nccl when `device` is CUDA, each rank on GPU LOCAL_RANK; else gloo).
    Ranks other than 0 stop writing Hydra's log file and log warnings only, so that train.log and
    the console carry rank 0's lines once.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        cuda = device is not None and device.type == "cuda"
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
        atexit.register(_destroy)
    rank, world = dist.get_rank(), dist.get_world_size()
    if rank > 0:
        root = logging.getLogger()
        for handler in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
            root.removeHandler(handler)
            handler.close()
        log.setLevel(logging.WARNING)
    else:
        log.info("data-parallel: %d ranks, backend %s", world, dist.get_backend())
    return rank, world


def rank_dir(run_dir: Path, rank: int, world: int) -> Path:
    """Where this rank writes: the run folder for rank 0; a private scratch folder (removed at exit)
    for the others, holding a copy of the run's checkpoints so that trainer.resume=auto resumes
    every rank from the same last.pt."""
    if world == 1:
        return run_dir
    dirs: list[str | None] = [None] * world
    dist.all_gather_object(dirs, str(Path(run_dir).resolve()))
    if len(set(dirs)) > 1:
        raise UserError(f"the {world} ranks got different run folders ({', '.join(sorted(set(dirs)))}): "
                        f"pass the same hydra.run.dir=DIR to every rank, e.g. "
                        f"torchrun --nproc_per_node={world} -m metarec.cli train hydra.run.dir=outputs/ddp ...")
    where = run_dir
    if rank > 0:
        where = Path(tempfile.mkdtemp(prefix=f"metarec-rank{rank}-"))
        atexit.register(shutil.rmtree, where, True)
        if (run_dir / "checkpoints").is_dir():
            shutil.copytree(run_dir / "checkpoints", where / "checkpoints")
    dist.barrier()  # rank 0 touches its checkpoints only once the others have their copies
    return where


def shard(batch: TaskBatch, rank: int, world: int) -> TaskBatch:
    """This rank's equal, contiguous slice of the global meta-batch."""
    if world == 1:
        return batch
    if batch.n_tasks % world:
        raise UserError(f"trainer.meta_batch_size={batch.n_tasks} does not split evenly over {world} ranks: "
                        f"use a multiple of {world}")
    per_rank = batch.n_tasks // world
    return batch.select(slice(rank * per_rank, (rank + 1) * per_rank))


def make_sync(world: int) -> Callable[[Iterable[Tensor]], None] | None:
    """The algorithms' `sync` hook: replaces each meta-gradient by its mean over ranks (None for one
    process). With equal slices, the mean of the ranks' mean meta-losses is the global mean."""
    if world == 1:
        return None

    def sync(params: Iterable[Tensor]) -> None:
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])  # one all-reduce for all of them
        dist.all_reduce(flat)  # sum (gloo has no average)
        flat /= world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    return sync


def mean(value: float, world: int) -> float:
    """A number's mean over ranks (the logged loss of the global meta-batch)."""
    if world == 1:
        return value
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.item() / world


def _destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
