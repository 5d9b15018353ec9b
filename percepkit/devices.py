"""Choosing the torch device from a user's ``--device`` / ``train.device`` value."""

from __future__ import annotations

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
