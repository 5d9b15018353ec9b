"""Process-group helpers for multi-GPU / multi-node training under ``torchrun``.

``torchrun`` sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`setup` reads them and joins
the process group (NCCL on CUDA, gloo on CPU). Without them everything is a single process and
every helper here is a no-op, so the trainer has one code path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import PercepkitError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank among ``world_size`` and its GPU index on the node."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise PercepkitError(f"environment variable {name}={value!r} is not an integer") from None


def env_info() -> DistInfo:
    """Rank, world size and local rank from torchrun's environment (single process if unset)."""
    return DistInfo(_env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0))


def setup(device_type: str) -> DistInfo:
    """Join the process group if launched by torchrun with more than one process."""
    info = env_info()
    if not info.enabled:
        return info
    if dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank,
                        dist.get_backend())
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        if info.local_rank >= torch.cuda.device_count():
            raise PercepkitError(
                f"LOCAL_RANK {info.local_rank} but only {torch.cuda.device_count()} GPU(s) are "
                f"visible; launch at most that many processes per node (--nproc_per_node)")
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), info.local_rank, backend)


def cleanup() -> None:
    """Leave the process group (if one was joined)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every process (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_mean(x: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over processes, in place (``x`` itself in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x /= dist.get_world_size()
    return x


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every process (``obj`` itself in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` in a single process)."""
    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
