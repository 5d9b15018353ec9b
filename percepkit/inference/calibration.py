"""Whether a network may run in reduced precision: its bf16/fp16 output on a calibration image
must stay within a budget of its fp32 output. Measured once per network, device and torch
version, and cached in ``$PERCEPKIT_CACHE/precision.json``."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..runtime.precision import Precision

#: The budget, in levels of 255: mean |Δ| and the 99.9th percentile of |Δ|.
MEAN_BUDGET = 0.5
P999_BUDGET = 4.0
#: Side of the calibration input (a crop of the built-in Set5 ``baby``), for every network.
CALIBRATION_SIDE = 128
CACHE_FILE = "precision.json"


@dataclass(frozen=True)
class Drift:
    """How far a reduced-precision output is from the fp32 output, in levels of 255."""

    mean: float
    p999: float

    @property
    def within_budget(self) -> bool:
        return self.mean <= MEAN_BUDGET and self.p999 <= P999_BUDGET

    def describe(self) -> str:
        return f"mean |Δ| {self.mean:.2f}, 99.9th percentile {self.p999:.2f} levels"


def calibration_image(side: int = CALIBRATION_SIDE) -> torch.Tensor:
    """(1, 3, side, side) in [0, 1]: the centre of the built-in Set5 ``baby``."""
    from importlib import resources

    from ..data.images import read_image

    path = resources.files("percepkit") / "assets" / "Set5" / "baby.png"
    with resources.as_file(path) as p:
        image = read_image(p)
    h, w = image.shape[-2:]
    top, left = (h - side) // 2, (w - side) // 2
    return image[None, :, top:top + side, left:left + side].contiguous()


def drift_between(out: torch.Tensor, ref: torch.Tensor) -> Drift:
    """The drift of ``out`` from ``ref`` (both in [0, 1]; clamped as images are saved)."""
    diff = ((out.clamp(0, 1) - ref.clamp(0, 1)).abs() * 255).flatten().double()
    return Drift(float(diff.mean()), float(torch.quantile(diff, 0.999)))


def measure_drift(run: Callable[[torch.Tensor, Precision], torch.Tensor],
                  reduced: Precision, image: torch.Tensor | None = None) -> Drift:
    """Run ``run(image, precision)`` in fp32 and in ``reduced``; the drift of the latter."""
    image = calibration_image() if image is None else image
    return drift_between(run(image, reduced), run(image, Precision("fp32", reduced.device_type)))


def network_key(model: nn.Module, precision: Precision, device: torch.device) -> str:
    """What a cached verdict depends on: the weights, the net's class, the device, the dtype and
    torch's version (its kernels decide the rounding)."""
    digest = hashlib.sha256(type(model).__qualname__.encode())
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().float().cpu().numpy().tobytes())
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    return f"{digest.hexdigest()[:24]} {where} {precision.name} torch {torch.__version__}"


def cached_verdict(key: str) -> bool | None:
    """The cached verdict for ``key`` (``None``: never measured, or an unreadable cache)."""
    from ..runtime.files import cache_root

    try:
        record = json.loads((cache_root() / CACHE_FILE).read_text())
    except (OSError, ValueError):
        return None
    entry = record.get(key) if isinstance(record, dict) else None
    return entry.get("within_budget") if isinstance(entry, dict) else None


def remember_verdict(key: str, drift: Drift) -> None:
    """Add ``drift`` to the cache (a read-only or full cache folder is no reason to fail)."""
    from ..runtime.files import atomic_write, cache_root

    path = cache_root() / CACHE_FILE
    try:
        record = json.loads(path.read_text())
        record = record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        record = {}
    record[key] = {"within_budget": drift.within_budget, "mean": round(drift.mean, 4),
                   "p999": round(drift.p999, 4)}
    try:
        data = json.dumps(record, indent=1).encode()
        atomic_write(path, lambda f: f.write(data))
    except OSError:
        pass


def reduced_precision_allowed(model: nn.Module, reduced: Precision, device: torch.device,
                              run: Callable[[torch.Tensor, Precision], torch.Tensor]) -> bool:
    """Whether ``model`` stays within the budget in ``reduced`` (cached, else measured)."""
    key = network_key(model, reduced, device)
    verdict = cached_verdict(key)
    if verdict is None:
        drift = measure_drift(run, reduced)
        remember_verdict(key, drift)
        verdict = drift.within_budget
    return verdict
