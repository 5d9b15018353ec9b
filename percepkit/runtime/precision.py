"""Numeric precision: the one ``precision`` setting (``auto``, ``fp32``, ``bf16``, ``fp16``) of
training, inference, metrics and benchmarks, and what the hardware does well.

``auto`` is bf16 autocast on CUDA GPUs that support bf16 and on CPUs with native bf16 matrix
units (AMX tiles or AVX512-BF16, asked of torch at run time), fp32 everywhere else. ``fp16``
(autocast with a gradient scaler) is CUDA-only. Loss terms and metric reductions turn autocast
off and stay fp32 whatever is chosen (:func:`percepkit.losses.base.full_precision`).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Literal

import torch

from ..errors import PercepkitError

PrecisionName = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_bf16_units() -> bool:
    """Whether this CPU multiplies bf16 natively (AMX tiles or AVX512-BF16), from torch's own
    capability checks. Without them torch emulates bf16 and autocast is several times slower
    than fp32 (an AVX2-only EPYC here: a 2048² bf16 matmul well under 1 GFLOP/s, fp32 124).
    ``PERCEPKIT_CPU_BF16=0`` (or ``1``) overrides the check: runs (and the test suite) that must
    give the same numbers on every CPU keep ``auto`` at fp32."""
    override = os.environ.get("PERCEPKIT_CPU_BF16")
    if override in ("0", "1"):
        return override == "1"
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def native_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast is fast on ``device`` (a bf16-capable GPU, or a CPU with units)."""
    if device.type == "cuda":
        try:
            return torch.cuda.is_bf16_supported(including_emulation=False)
        except TypeError:  # torch < 2.3 has no such argument
            return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_has_bf16_units()
    return False


@dataclass(frozen=True)
class Precision:
    """A resolved precision: its name, the autocast dtype (``None``: fp32) and the device."""

    name: str
    device_type: str

    @property
    def dtype(self) -> torch.dtype | None:
        return DTYPES[self.name]

    @property
    def reduced(self) -> bool:
        return self.dtype is not None

    @property
    def scaled(self) -> bool:
        """fp16 needs a gradient scaler; bf16 has fp32's range and does not."""
        return self.name == "fp16"

    def autocast(self) -> contextlib.AbstractContextManager:
        """The autocast context of this precision (nothing for fp32)."""
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def describe(self) -> str:
        """``fp32``, ``bf16 autocast``, ``fp16 autocast``: what runs print and record."""
        return self.name if self.dtype is None else f"{self.name} autocast"


def autocast(precision: Precision | None) -> contextlib.AbstractContextManager:
    """``precision``'s autocast context; nothing for ``None`` (fp32)."""
    return contextlib.nullcontext() if precision is None else precision.autocast()


def check_precision(requested: str | Precision | None, where: str = "--precision") -> str:
    """``requested`` normalised (``None`` -> ``auto``), or one paragraph naming the choices."""
    if isinstance(requested, Precision):
        return requested.name
    name = (requested or "auto").strip().lower()
    aliases = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
    name = aliases.get(name, name)
    if name not in PRECISIONS:
        raise PercepkitError(f"{where} {requested!r}: unknown precision (use one of "
                             f"{', '.join(PRECISIONS)})")
    return name


def resolve_precision(requested: str | Precision | None, device: torch.device,
                      where: str = "--precision") -> Precision:
    """The precision to run on ``device``: ``auto`` decided by :func:`native_bf16`; ``fp16``
    off CUDA is refused; ``bf16`` forced where it is emulated warns that it is slow. A
    :class:`Precision` already resolved for this device is returned as it is."""
    if isinstance(requested, Precision) and requested.device_type == device.type:
        return requested
    name = check_precision(requested.name if isinstance(requested, Precision) else requested,
                           where)
    if name == "auto":
        name = "bf16" if native_bf16(device) else "fp32"
    elif name == "fp16" and device.type != "cuda":
        raise PercepkitError(f"{where} fp16: fp16 autocast is CUDA-only; on {device.type} use "
                             f"bf16 (fast where the CPU has bf16 units) or fp32")
    elif name == "bf16" and device.type in ("cpu", "cuda") and not native_bf16(device):
        what = "this CPU has no bf16 matrix units (AMX or AVX512-BF16)" if device.type == "cpu" \
            else "this GPU has no bf16 support"
        warnings.warn(f"{where} bf16: {what}, so bf16 is emulated and several times slower "
                      f"than fp32", stacklevel=2)
    return Precision(name, device.type)
