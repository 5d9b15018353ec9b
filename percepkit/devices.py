"""Choosing the torch device from a user's ``--device`` / ``train.device`` value, and the CPU
thread count of a block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from .errors import PercepkitError


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
