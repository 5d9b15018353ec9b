"""Memory: what a forward pass may use, how big a tile that allows, and the CPU allocator policy."""

from __future__ import annotations

import ctypes
import math
import os
import sys

import torch

from ..errors import PercepkitError

GiB = 1024**3


def available_memory(device: torch.device) -> int:
    """Bytes free for activations now: CUDA's free memory, or the OS's available RAM."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 * GiB


def format_bytes(n: float) -> str:
    """``n`` bytes for people: ``"3.2 GiB"``, ``"512 MiB"``, ``"4.1 TiB"``."""
    for unit, size in (("PiB", 1024**5), ("TiB", 1024**4), ("GiB", GiB)):
        if n >= size / 10:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1024**2:.0f} MiB"


def require_memory(need: float, device: torch.device, what: str, hint: str) -> None:
    """Raise one paragraph when ``need`` bytes (``what``: what needs them) exceed the memory
    ``device`` has available (:func:`available_memory`); ``hint`` says what to reduce. Call it
    before an allocation that grows with user numbers (scale, image size, channels)."""
    free = available_memory(device)
    if need > free:
        where = "the CPU (RAM)" if device.type == "cpu" else str(device)
        raise PercepkitError(f"{what} needs about {format_bytes(need)}, but {where} has "
                             f"{format_bytes(free)} available; {hint}")


def default_memory_budget(device: torch.device) -> int:
    """Bytes of activations one forward pass may use: half the free GPU memory, or on the CPU
    40% of the available RAM capped at 1 GiB: an x4 upscale of 1024x1024 then peaks below 2 GB of
    resident memory (docs/inference.md)."""
    free = available_memory(device)
    if device.type == "cuda":
        return int(free * 0.5)
    return int(min(1 * GiB, 0.4 * free))


def parse_memory(text: str) -> int:
    """``'1.5G'``, ``'512M'``, ``'800000000'`` -> bytes."""
    units = {"k": 1024, "m": 1024**2, "g": GiB, "t": 1024**4}
    s = text.strip().lower().removesuffix("b").removesuffix("i")
    factor = units.get(s[-1:], 1)
    number = s[:-1] if s[-1:] in units else s
    try:
        value = float(number) * factor
    except ValueError:
        raise PercepkitError(f"cannot read memory size {text!r}; use e.g. 512M or 2G") from None
    if value <= 0:
        raise PercepkitError(f"memory size must be positive, got {text!r}")
    return int(value)


def fits(height: int, width: int, bytes_per_pixel: float, budget: float) -> bool:
    """Whether ``height x width`` pixels of ``bytes_per_pixel`` activations fit ``budget``."""
    return height * width * bytes_per_pixel <= budget


def tile_side(budget: float, bytes_per_pixel: float, margin: int = 0, align: int = 1) -> int:
    """The side of the largest square tile core, a multiple of ``align``, whose input window
    (the core plus ``margin`` pixels on every side) fits ``budget`` bytes of activations.

    ``bytes_per_pixel`` is the peak activation memory per pixel of the input the tile is cut
    from (:attr:`NetInfo.bytes_per_pixel <percepkit.inference.geometry.NetInfo>` for network
    inputs). Zero or negative when not even the margins fit; callers decide what that means.
    The one place where a budget becomes a tile size: the automatic tiles, the tiles of each
    stage of exact staged tiling and the reduced copy of approximate statistics all use it.
    """
    return (int(math.sqrt(budget / bytes_per_pixel)) - 2 * margin) // align * align


# -- the CPU allocator ---------------------------------------------------------------------------
#: How much more than its live activations a tiled pass holds when freed memory is kept: the
#: Predictor then cuts tiles for ``budget / KEPT_HEAP_FACTOR``. Measured (docs/inference.md):
#: kept memory with half the budget was 20-40% faster than returning freed memory to the OS
#: with the whole budget (page faults took half the time), at about the same peak.
KEPT_HEAP_FACTOR = 2.0
_LIBC: ctypes.CDLL | None = None
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def _set_keep(keep: bool) -> bool:
    """glibc: serve large blocks from the heap and keep freed memory (``keep``), or the
    defaults (blocks over 128 KiB-32 MiB are mapped and returned to the OS when freed)."""
    if _LIBC is None:
        return False
    if keep:
        return _LIBC.mallopt(_M_MMAP_MAX, 0) == 1 and \
            _LIBC.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    ok = _LIBC.mallopt(_M_MMAP_MAX, 65536) == 1 and \
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 128 * 1024) == 1
    _LIBC.malloc_trim(0)
    return ok


def keep_freed_memory() -> bool:
    """Make glibc serve large tensors from the heap and keep freed memory for reuse.

    By default glibc returns every allocation above 32 MiB to the OS when it is freed, so each
    forward pass faults its memory back in (docs/inference.md has the measurement). After this
    call the memory of one pass is reused by the next. Process-wide: the process keeps its peak
    memory, and a heap that keeps freed blocks holds more than the live tensors (see
    :data:`KEPT_HEAP_FACTOR`). Returns whether it took effect (Linux with glibc only).
    """
    global _LIBC
    if _LIBC is None:
        if not sys.platform.startswith("linux"):
            return False
        try:
            libc = ctypes.CDLL("libc.so.6")
            libc.mallopt, libc.malloc_trim  # noqa: B018 (glibc only)
        except (OSError, AttributeError):
            return False
        _LIBC = libc
    return _set_keep(True)
