"""Choosing the torch device from a user's ``--device`` / ``train.device`` value, and the CPU
thread count of a block."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator

import torch

from ..errors import PercepkitError


def resolve_device(name: str | torch.device | None = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> CUDA if available, else CPU; bare ``cuda`` -> this process's GPU.

    Unknown or unavailable devices raise :class:`PercepkitError` with what to use instead.
    """
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").strip()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise PercepkitError(f"--device {name!r}: unknown device (use cpu, cuda, cuda:1, mps "
                             f"or auto)") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise PercepkitError(f"--device {name}: CUDA is not available (torch "
                                 f"{torch.__version__}, {torch.cuda.device_count()} GPUs "
                                 f"visible); use --device cpu")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise PercepkitError(f"--device {name}: MPS is not available on this machine")
    return device


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run a block with ``n`` intra-op CPU threads (``None``: leave the setting alone).

    Per-image preprocessing and PSNR/SSIM are many small tensor ops: extra OpenMP threads gain
    little on them, and on a machine whose cores are busy each parallel region can wait a whole
    scheduler time slice for a descheduled thread. We measured 5-10x slowdowns on 2 busy cores,
    so those steps run single-threaded; the model and LPIPS keep the caller's thread count.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def busy_cores(interval: float = 0.1) -> float | None:
    """How many cores other processes keep busy right now: the non-idle share of all CPU time
    in ``/proc/stat`` over ``interval`` seconds, times the CPU count (``None`` without Linux's
    ``/proc/stat``). Unlike the load average, this does not remember a job that just ended."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:9]]
        return values[3] + values[4], sum(values)  # idle + iowait, all (guest is in user)

    try:
        idle0, total0 = sample()
        time.sleep(interval)
        idle1, total1 = sample()
    except (OSError, ValueError, IndexError):
        return None
    if total1 <= total0:
        return None
    return (1.0 - (idle1 - idle0) / (total1 - total0)) * (os.cpu_count() or 1)


def free_threads(threads: int, cpus: int, busy: float | None) -> int:
    """``threads`` less the cores that ``busy`` leaves to us out of ``cpus``, at least 1."""
    if busy is None:
        return threads
    return max(1, min(threads, round(cpus - busy)))


def use_cpu_threads(requested: int | None) -> int:
    """Set torch's CPU thread count: ``requested``, or by default torch's count less the cores
    other processes keep busy (:func:`busy_cores`). On 2 busy cores, 2 OpenMP threads made LPIPS
    6-7x slower than 1 (each parallel region waits for a descheduled thread); on 2 idle cores
    2 threads are 1.4x faster (docs/evaluation.md). Returns the count in effect."""
    n = requested or free_threads(torch.get_num_threads(), os.cpu_count() or 1, busy_cores())
    if n != torch.get_num_threads():
        torch.set_num_threads(n)
    return n
