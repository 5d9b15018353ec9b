"""From a name or a file to a network: the one way ``eval``, ``upscale``, ``stylize``, ``export``,
``convert``, ``bench --checkpoint``, ``train --init`` and :func:`percepkit.load` take.

A spec is resolved by one rule, the first match wins (:func:`resolve`):

1. an **existing file**: a percepkit checkpoint (:mod:`.checkpoint`, rebuilt from its metadata),
   else a third-party file (:mod:`.foreign`: pytorch/examples style models, SR models of other
   projects through spandrel);
2. a **trained model's name** (:data:`~percepkit.registry.MODELS`, :mod:`.zoo`): its verified
   file, found locally or downloaded (:mod:`.hub`);
3. a **registered transform's name** (:data:`~percepkit.registry.TRANSFORMS`: ``bicubic``,
   ``johnson_sr``, ``spandrel:Compact``, ...), built with ``scale`` (default 4) when it takes one:
   weights as initialised, so only where the caller allows it (``transforms=True``: ``eval``,
   ``upscale``, :func:`percepkit.load`; a parameter-free transform such as ``bicubic`` is
   complete).

So a file named ``candy`` in the current folder is that file, not the model. A folder, a missing
path or an unknown name is one sentence (:class:`~percepkit.errors.CheckpointError`) with
did-you-mean suggestions. ``task`` (a registered task, :data:`~percepkit.registry.TASKS`) and
``scale``, when given, are checked against the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import CheckpointError, PercepkitError
from ..registry import MODELS, TRANSFORMS
from ..registry.arguments import arguments, close_matches

FILE, MODEL, TRANSFORM = "file", "model", "transform"


@dataclass(frozen=True)
class Source:
    """What a spec resolved to: its ``kind`` (:data:`FILE`, :data:`MODEL`, :data:`TRANSFORM`),
    a display ``name`` (the model or transform name, or the file's stem) and the ``path`` of its
    file (None for a transform)."""

    spec: str
    kind: str
    name: str
    path: Path | None = None


@dataclass
class Loaded:
    """A network (eval mode, on its device) and where it came from."""

    net: torch.nn.Module
    source: Source

    @property
    def task(self) -> str | None:
        return getattr(self.net, "task", None)

    @property
    def scale(self) -> int:
        return int(getattr(self.net, "scale", 1))

    @property
    def untrained_parameters(self) -> int:
        """Parameters left as initialised (a transform built by name), 0 otherwise."""
        if self.source.kind != TRANSFORM:
            return 0
        return sum(p.numel() for p in self.net.parameters())


def resolve(spec: str | Path, transforms: bool = True) -> Source:
    """Apply the precedence rule (module docstring) to ``spec``; nothing is loaded, but a model's
    file is found (or downloaded) and verified."""
    path = Path(spec).expanduser()
    if path.is_file():
        return Source(str(spec), FILE, path.stem, path)
    name = str(spec)
    if name in MODELS:
        return Source(name, MODEL, name, MODELS.get(name).path())
    if transforms and name in TRANSFORMS:
        return Source(name, TRANSFORM, name)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder; give a checkpoint file (e.g. "
                              f"{path}/checkpoints/best.safetensors) or a model name")
    if path.suffix or "/" in name or "\\" in name:
        raise CheckpointError(f"{name}: no such checkpoint file")
    raise CheckpointError(f"{name}: {_unknown(name, transforms)}")


def _unknown(name: str, transforms: bool) -> str:
    """'no such ...' with did-you-mean suggestions among models (and transforms)."""
    names = MODELS.names() + (TRANSFORMS.names() if transforms else [])
    close = close_matches(name, names, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    kinds = "checkpoint file, model name or transform name" if transforms else \
        "checkpoint file or model name"
    listed = f" Models: {', '.join(MODELS.names()) or '(none)'}" + \
        ("; transforms: percepkit list transforms." if transforms else ".")
    return f"no such {kinds}.{hint}{listed}"


def read_network(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The network of a file: a percepkit checkpoint, else a supported third-party file."""
    from .checkpoint import is_checkpoint, load_transform
    from .foreign import load_foreign

    if is_checkpoint(path):
        return load_transform(path, device=device)
    return load_foreign(path, device=device)


def _task(task: str | None):  # noqa: ANN202 (a Task class; train.tasks is imported late)
    """The registered task class of ``task`` (:data:`~percepkit.registry.TASKS`), or None."""
    if task is None:
        return None
    from ..train.tasks import task_class

    return task_class(task)


def build_transform(name: str, scale: int | None = None, task: str | None = None,
                    hint: str = "") -> torch.nn.Module:
    """A registered transform by name, as initialised, with ``scale`` when its constructor
    takes one (default: the task's, :meth:`~percepkit.train.tasks.Task.eval_scale`, else 4);
    a transform that does not fit ``task`` is refused before anything is built."""
    obj = TRANSFORMS.get(name)
    cls = _task(task)
    problem = cls.network_problem(obj) if cls is not None else None
    if problem:
        fits = [e.name for e in TRANSFORMS.entries() if not cls.network_problem(e.obj)]
        raise PercepkitError(f"{name}: {problem}" + (f"; {hint}" if hint else "")
                             + f" ({', '.join(fits) or 'none registered'})")
    takes_scale = any(a.name == "scale" for a in arguments(obj))
    spec: dict = {"name": name}
    if takes_scale:
        default = 4 if scale is None else scale
        spec["scale"] = cls.eval_scale(scale) if cls is not None else default
    elif scale not in (None, 1):
        raise PercepkitError(f"transform {name} has no scale (it does not upscale); leave the "
                             f"scale out")
    try:
        return TRANSFORMS.build(spec, where=f"transform {name}")
    except ValueError as e:  # the constructor's own check, e.g. johnson_sr's scales
        raise PercepkitError(f"transform {name} with scale {spec.get('scale')}: {e}") from None


def load_network(spec: str | Path, task: str | None = None, scale: int | None = None,
                 device: str | torch.device = "cpu", transforms: bool = True,
                 asked_by: str | None = None, hint: str = "") -> Loaded:
    """The network ``spec`` names (precedence: module docstring), in eval mode on ``device``.

    ``task`` (a registered task: ``"sr"``, ``"style"``, ...) must fit the network (the task's
    :meth:`~percepkit.train.tasks.Task.network_problem`); with ``asked_by`` (``"--task sr"``,
    ``"the recipe (train.init)"``) a checkpoint recorded as trained for another task is refused
    too, before it is loaded. ``scale``, when given, must be the network's (a transform name is
    built with it). ``transforms=False`` refuses transform names (callers that need trained
    weights: ``stylize``, ``export``, ``convert``, ``bench``, ``train --init``). ``hint`` ends a
    task-mismatch message (what the calling command runs instead).
    """
    source = resolve(spec, transforms=transforms)
    if source.kind == TRANSFORM:
        net = build_transform(source.spec, scale, task, hint)
    else:
        assert source.path is not None
        if task is not None and asked_by is not None:
            from ..train.tasks import check_checkpoint_task

            check_checkpoint_task(source.path, task, asked_by)
        net = read_network(source.path, device=device)
    loaded = Loaded(net.to(device).eval(), source)
    cls = _task(task)
    problem = cls.network_problem(loaded.net) if cls is not None else None
    if problem:
        raise PercepkitError(f"{spec}: {problem}" + (f"; {hint}" if hint else ""))
    if scale is not None and loaded.scale != scale:
        raise PercepkitError(f"{spec}: the model upscales x{loaded.scale}, not x{scale}; leave "
                             f"the scale out (the model knows it) or ask for x{loaded.scale}")
    return loaded


def load(spec: str | Path, device: str | torch.device = "cpu", transforms: bool = False
         ) -> torch.nn.Module:
    """:func:`load_network`'s network alone (trained weights only, unless ``transforms``)."""
    return load_network(spec, device=device, transforms=transforms).net
