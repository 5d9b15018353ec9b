"""Checkpoints as safetensors files (never pickle), written atomically, and what they hold.

A checkpoint holds a nested *state* (model weights, optimiser/scheduler/scaler state, EMA
weights, RNG states, and in adversarial runs the discriminator's weights, optimiser, scheduler
and scaler: any mix of dicts, lists, tensors and JSON scalars) and JSON *metadata*
(recipe text, the transform spec, step, versions). Tensors are stored flat under dotted keys;
the structure and the metadata go into the safetensors header.

This module is the one owner of a checkpoint's contents: the state parts are named by the
constants below, :func:`training_metadata` writes the metadata of a training checkpoint, and
:class:`Checkpoint` reads both back through typed readers (the trainer, resume,
:func:`load_transform` and export use it).
"""

from __future__ import annotations

import datetime as _dt
import json
import platform
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import CheckpointError
from ..runtime.files import atomic_write

FORMAT = "percepkit-checkpoint"
VERSION = 1
_TENSOR = "__tensor__"
_TUPLE = "__tuple__"
_NDARRAY = "__ndarray__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by references, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous().clone()
        return {_TENSOR: prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {_NDARRAY: prefix}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            out[str(k)] = _flatten(v, f"{prefix}.{k}" if prefix else str(k), tensors)
        if any(not isinstance(k, str) for k in obj):
            out["__intkeys__"] = True
        return out
    if isinstance(obj, (list, tuple)):
        items = [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {_TUPLE: items} if isinstance(obj, tuple) else items
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} at {prefix!r} in a checkpoint")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            return tensors[obj[_TENSOR]]
        if _NDARRAY in obj:
            return tensors[obj[_NDARRAY]].numpy()
        if _TUPLE in obj:
            return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
        intkeys = obj.get("__intkeys__", False)
        return {(int(k) if intkeys and k.lstrip("-").isdigit() else k): _unflatten(v, tensors)
                for k, v in obj.items() if k != "__intkeys__"}
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def save_checkpoint(path: str | Path, state: Mapping[str, Any], metadata: Mapping[str, Any]
                    ) -> Path:
    """Write ``state`` and ``metadata`` to ``path`` atomically (temp file, fsync, rename)."""
    from safetensors.torch import save

    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    tree = _flatten(dict(state), "", tensors)
    header = {"format": FORMAT, "version": str(VERSION), "tree": json.dumps(tree),
              "metadata": json.dumps(dict(metadata))}
    data = save(tensors, metadata=header)
    atomic_write(path, lambda f: f.write(data), durable=True)
    return path


def save_weights(path: str | Path, state: Mapping[str, torch.Tensor],
                 metadata: Mapping[str, str] | None = None) -> Path:
    """Write a plain state dict as safetensors (no percepkit structure), for other tools."""
    from safetensors.torch import save

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    data = save(tensors, metadata=dict(metadata or {}))
    path = Path(path)
    atomic_write(path, lambda f: f.write(data), durable=True)
    return path


def is_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` is a percepkit checkpoint (a safetensors file with percepkit metadata)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return (f.metadata() or {}).get("format") == FORMAT
    except Exception:
        return False


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Only the metadata of a checkpoint (cheap: reads the header)."""
    return load_checkpoint(path, tensors=False)[1]


def load_checkpoint(path: str | Path, tensors: bool = True) -> tuple[dict[str, Any], dict]:
    """Read ``(state, metadata)``; a truncated or foreign file raises :class:`CheckpointError`."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give a checkpoint file (e.g. "
                              f"{path}/checkpoints/best.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = f.metadata() or {}
            if header.get("format") != FORMAT:
                raise CheckpointError(f"{path}: a safetensors file, but not a percepkit "
                                      "checkpoint (no percepkit metadata)")
            if int(header.get("version", 0)) > VERSION:
                raise CheckpointError(f"{path}: written by a newer percepkit (format "
                                      f"{header['version']}); upgrade percepkit to read it")
            flat = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}  # noqa: SIM118
            tree = json.loads(header["tree"])
            metadata = json.loads(header["metadata"])
    except CheckpointError:
        raise
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable percepkit checkpoint ({type(e).__name__}: "
                              f"{e}); the file may be truncated or from another program") from None
    return (_unflatten(tree, flat) if tensors else {}), metadata


# -- what a checkpoint holds -----------------------------------------------------------------------
MODEL = "model"          # the transform's state dict (the only part a zoo file keeps)
EMA_MODEL = "ema"        # EMA weights of the transform, if the run kept them
OPTIMIZER = "optimizer"
SCHEDULER = "scheduler"
SCALER = "scaler"        # the AMP GradScaler, when float16 AMP was on
RNG = "rng"              # {"rank0": rng state, ...}, one per training process
# adversarial training (a gan term): the discriminator and what trains it
DISCRIMINATOR = "discriminator"  # its state dict (BatchNorm statistics, spectral-norm vectors)
OPTIMIZER_D = "optimizer_d"
SCHEDULER_D = "scheduler_d"
SCALER_D = "scaler_d"    # its own AMP GradScaler, when float16 AMP was on


def save_model(path: str | Path, weights: Mapping[str, torch.Tensor],
               metadata: Mapping[str, Any]) -> Path:
    """A checkpoint holding only a transform's weights (what zoo and converted files hold);
    ``metadata`` needs ``task`` and ``transform`` for :func:`load_transform`."""
    return save_checkpoint(path, {MODEL: dict(weights)}, metadata)


def training_metadata(*, task: str, transform: Mapping[str, Any], recipe: str, recipe_name: str,
                      step: int, iterations: int, batch_size: int, world_size: int, seed: int,
                      samples_per_rank: int, best_metric: str, best_value: float | None,
                      best_step: int | None, val: Mapping[str, float], device: str,
                      precision: str) -> dict[str, Any]:
    """The metadata of a training checkpoint (what :class:`Checkpoint` reads back)."""
    from .. import __version__

    return {
        "task": task, "transform": dict(transform), "recipe": recipe, "recipe_name": recipe_name,
        "step": step, "iterations": iterations, "batch_size": batch_size,
        "world_size": world_size, "seed": seed, "samples_per_rank": samples_per_rank,
        "best": {"metric": best_metric, "value": best_value, "step": best_step},
        "val": dict(val), "percepkit_version": __version__,
        "torch_version": torch.__version__, "python_version": platform.python_version(),
        "device": device, "precision": precision,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
    }


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back: its state parts and metadata, with typed readers."""

    path: Path
    state: dict[str, Any]
    meta: dict[str, Any]

    @classmethod
    def read(cls, path: str | Path, tensors: bool = True) -> Checkpoint:
        """Read ``path`` (only the header when ``tensors`` is false)."""
        state, meta = load_checkpoint(path, tensors)
        return cls(Path(path), state, meta)

    def weights(self, ema: bool = True) -> dict[str, torch.Tensor] | None:
        """The transform's weights: the EMA ones when present and ``ema`` is true."""
        ema_weights = self.state.get(EMA_MODEL) if ema else None
        return ema_weights if ema_weights else self.state.get(MODEL)

    def rng(self, rank: int) -> dict[str, Any] | None:
        """The RNG states saved by process ``rank``, if any."""
        return (self.state.get(RNG) or {}).get(f"rank{rank}")

    @property
    def task(self) -> str | None:
        return self.meta.get("task")

    @property
    def transform(self) -> dict[str, Any] | None:
        """The transform spec (``{name: ..., ...}``) the weights belong to."""
        spec = self.meta.get("transform")
        return dict(spec) if isinstance(spec, Mapping) else None

    @property
    def step(self) -> int | None:
        step = self.meta.get("step")
        return None if step is None else int(step)

    @property
    def recipe_text(self) -> str | None:
        """The YAML text of the recipe the checkpoint was trained with (None if absent/empty)."""
        text = self.meta.get("recipe")
        return text if isinstance(text, str) and text.strip() else None

    @property
    def recipe_name(self) -> str | None:
        return self.meta.get("recipe_name") or None

    @property
    def best(self) -> tuple[float | None, int | None]:
        """``(value, step)`` of the best validation so far."""
        best = self.meta.get("best") or {}
        return best.get("value"), best.get("step")

    @property
    def world_size(self) -> int | None:
        return self.meta.get("world_size")

    @property
    def batch_size(self) -> int | None:
        return self.meta.get("batch_size")

    @property
    def samples_per_rank(self) -> int | None:
        """How many training samples each process had consumed."""
        n = self.meta.get("samples_per_rank")
        return None if n is None else int(n)


def state_dict_mismatch(error: RuntimeError) -> str:
    """The informative part of ``load_state_dict``'s error (which keys or shapes differ)."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    detail = "; ".join(lines[1:3]) if len(lines) > 1 else (lines[0] if lines else "")
    return detail[:400]


def check_spec_size(path: str | Path, spec: Mapping[str, Any],
                    weights: Mapping[str, torch.Tensor]) -> None:
    """Before building a checkpoint's transform: the network its spec describes, built on the
    ``meta`` device (no memory), must fit the available RAM and have the stored weights' shapes
    (a damaged or edited spec asking for huge channels is refused here, not by the allocator)."""
    from ..inference.memory import format_bytes, require_memory
    from ..registry import TRANSFORMS

    try:
        with torch.device("meta"):
            net = TRANSFORMS.build(spec, where=f"{path}: transform")
    except ValueError as e:
        raise CheckpointError(f"{path}: its transform {spec.get('name')}: {e}") from None
    except CheckpointError:
        raise
    except Exception:  # a part that cannot be built on meta: building it for real will tell
        return
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    need = sum(p.numel() * p.element_size() for p in net.state_dict().values())
    stored = {k: tuple(v.shape) for k, v in weights.items()}
    differ = sorted(k for k in shapes.keys() & stored.keys() if shapes[k] != stored[k])
    if differ:  # (names that differ are load_state_dict's to report)
        raise CheckpointError(f"{path}: weights do not fit its transform spec {dict(spec)} "
                              f"({differ[0]} is {stored[differ[0]]} in the file but "
                              f"{shapes[differ[0]]} in the spec, whose network holds "
                              f"{format_bytes(need)} of parameters); the file is damaged or "
                              f"was edited")
    require_memory(2 * need, torch.device("cpu"),
                   f"{path}: building its transform ({format_bytes(need)} of parameters, "
                   f"plus the stored copy)", "load it on a machine with more memory")


def load_transform(path: str | Path, device: str | torch.device = "cpu", ema: bool = True
                   ) -> torch.nn.Module:
    """Rebuild a checkpoint's transform network from its metadata and load its weights.

    EMA weights are used when present and ``ema`` is true. The module is in eval mode.
    """
    from ..registry import TRANSFORMS

    ckpt = Checkpoint.read(path)
    spec = ckpt.transform
    if spec is None:
        raise CheckpointError(f"{path}: checkpoint metadata has no transform spec")
    weights = ckpt.weights(ema)
    if not weights:
        raise CheckpointError(f"{path}: checkpoint holds no model weights")
    check_spec_size(path, spec, weights)
    try:
        model = TRANSFORMS.build(spec, where=f"{path}: transform")
    except ValueError as e:  # the constructor's own checks (e.g. johnson_sr's scales)
        raise CheckpointError(f"{path}: its transform {spec.get('name')}: {e}") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not fit {spec.get('name')}: "
                              f"{state_dict_mismatch(e)}") from None
    return model.to(device).eval()
