"""Data-parallel training under torchrun: DDP over gloo (CPU) or NCCL (GPU).

Every process runs the same recipe (the steps before training are deterministic, so every rank
builds the same student); training splits each global batch between the ranks and DDP averages
the gradients, so the result matches a single process on the same global batch up to float
summation order. Rank 0 writes checkpoints and artifacts.
"""
from __future__ import annotations

import os

import torch

from ..errors import NnslimError


def world_size_from_env() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise NnslimError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def setup(backend: str = "auto") -> tuple[int, int]:
    """(rank, world size); initialises the process group when torchrun started several processes."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    size = world_size_from_env()
    if size <= 1:
        return 0, 1
    if not dist.is_available():
        raise NnslimError("torch.distributed is not available in this torch build; run one process")
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available() or not dist.is_nccl_available():
            raise NnslimError("backend='nccl' needs CUDA GPUs and an NCCL build of torch; use backend='gloo'")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if local >= torch.cuda.device_count():
            raise NnslimError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} GPUs: "
                              "--nproc_per_node must not exceed the GPUs present")
        torch.cuda.set_device(local)
    elif backend == "gloo" and not dist.is_gloo_available():
        raise NnslimError("backend='gloo' is not available in this torch build")
    dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def pin_local_gpu() -> None:
    """Under torchrun on a GPU machine: this process's GPU (LOCAL_RANK) becomes the current one before any
    step runs, so that the steps before training (calibration, pruning) do not all land on GPU 0."""
    if world_size_from_env() <= 1 or not torch.cuda.is_available():
        return
    try:
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        raise NnslimError(f"LOCAL_RANK={os.environ.get('LOCAL_RANK')!r} is not an integer") from None
    if local < torch.cuda.device_count():  # (more processes than GPUs: setup() says so for NCCL)
        torch.cuda.set_device(local)


def local_device(rank_device: str = "auto") -> torch.device:
    import torch.distributed as dist

    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def average(t: torch.Tensor, size: int) -> torch.Tensor:
    """Mean over ranks (in place on a tensor every rank holds)."""
    if size > 1:
        import torch.distributed as dist

        dist.all_reduce(t)
        t /= size
    return t


def barrier(size: int) -> None:
    if size > 1:
        import torch.distributed as dist

        dist.barrier()


def is_main() -> bool:
    """Rank 0, or a run of one process (before the process group exists, torchrun's RANK says)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"
