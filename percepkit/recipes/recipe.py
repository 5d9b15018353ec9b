"""Recipes: YAML files that combine registered parts by name.

A recipe has these top-level keys (``{name: ..., **kwargs}`` blocks go to a registry, and their
other keys are constructor arguments)::

    name: sr_x4_feat             # optional; defaults to the file name
    task: sr                     # a registered task: percepkit list tasks (sr, style, ...)
    transform: {name: johnson_sr, scale: 4}
    loss_network: {name: vgg16, weights: imagenet}   # needed if a loss term uses features
    losses:
      - {name: feature, layers: [relu2_2], weight: 1.0}
    data:
      train: {name: sr_patches, root: data/coco, patch_size: 288, scale: 4, blur_sigma: 1.0}
      val: {name: set5, scale: 4}                    # optional
      style_image: styles/candy.jpg                  # style task only
      style_size: 256
    optimizer: {name: adam, lr: 1.0e-3}
    scheduler: {name: constant}                      # optional
    train: {iterations: 200000, batch_size: 4, seed: 0}
    checkpoint: {every: 1000, keep_last: 3}
    val: {metrics: [psnr, ssim, lpips]}              # optional; default: the task's

A part named without arguments may be written by name alone: ``transform: bicubic``,
``losses: [feature, {name: tv, weight: 1.0e-5}]``, ``data: {val: set5}``; loading normalises
every such block to ``{name: ...}`` (what ``percepkit recipe show`` prints).

Errors name the file, the key path (``losses[1].weight``) and what was expected.
``percepkit recipe schema`` prints a JSON Schema of all this (:mod:`percepkit.recipes.schema`).
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from ..errors import MissingExtraError, PercepkitError, RecipeError
from ..registry import (
    DATASETS,
    DISCRIMINATORS,
    LOSS_NETWORKS,
    LOSSES,
    OPTIMIZERS,
    SCHEDULERS,
    TASKS,
    TRANSFORMS,
    Registry,
)
from ..registry.arguments import check_arguments, close_matches
from .checks import check_parts, missing_files


@dataclass
class TrainSettings:
    """The ``train:`` block: how long and how to train.

    ``iterations``: optimisation steps. ``batch_size``: images per step *per process* (with
    torchrun the global batch is ``batch_size x WORLD_SIZE``). ``seed``: model init, data order
    and augmentation. ``device``: ``auto`` (CUDA if available), ``cpu``, ``cuda``, ``cuda:N``.
    ``precision``: ``auto`` (bf16 autocast on bf16-capable GPUs and on CPUs with bf16 matrix
    units, else fp32), ``fp32``, ``bf16`` or ``fp16`` (CUDA only, with a gradient scaler); the
    transform and the loss network run in it, loss terms and the optimiser state stay fp32.
    ``amp``/``amp_dtype`` are its deprecated predecessors (read as ``precision``).
    ``channels_last``: NHWC memory format on CUDA, and on the CPU in bf16. ``compile``:
    ``torch.compile`` the transform.
    ``grad_clip``: max gradient norm (None: off). ``ema``: decay of an exponential moving
    average of the weights (e.g. 0.999; None: off), used for validation and by ``load_transform``.
    ``workers``: DataLoader worker processes. ``log_every`` / ``sample_every`` / ``val_every``:
    steps between log lines, preview grids and validations. ``sample_images``: images in a preview
    grid. ``val_images``: cap on validation images (None: all). ``deterministic``: deterministic
    CUDA kernels (slower; CPU runs are deterministic anyway). ``init``: start from the weights of
    a model name (``percepkit list models``) or checkpoint file, with a fresh optimiser (None:
    random initialisation). ``d_steps``: discriminator updates per generator step, on the same
    batch (recipes with a ``gan`` term). ``gan_start``: warm-up steps that train the generator
    without the ``gan`` term and leave the discriminator alone. ``tensorboard``: also write
    TensorBoard logs (true: required, the optional extra ``percepkit[tensorboard]``; None: when
    that package is installed; false: off).
    """

    iterations: int = 1000
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    amp: bool | None = None
    amp_dtype: Literal["float16", "bfloat16"] | None = None
    channels_last: bool = True
    compile: bool = False
    grad_clip: float | None = None
    ema: float | None = None
    workers: int = 2
    log_every: int = 50
    sample_every: int = 1000
    val_every: int = 1000
    sample_images: int = 4
    val_images: int | None = None
    deterministic: bool = False
    init: str | None = None
    d_steps: int = 1
    gan_start: int = 0
    tensorboard: bool | None = None
    best: dict[str, Any] | None = None


@dataclass
class BestSettings:
    """The ``train.best`` block: the validation metric that picks ``best.safetensors``."""

    metric: str
    mode: Literal["auto", "min", "max"] = "auto"


@dataclass
class ValSettings:
    """The ``val:`` block: what validation computes.

    ``metrics``: registered metrics (``percepkit list metrics``) computed on ``data.val`` at
    every validation, one ``val.csv`` column each, as ``percepkit eval`` computes them (None:
    the task's default, SR: psnr, ssim, grid, blobs). ``protocol``: the level of the task's
    benchmark protocol that makes the validation inputs of the restoration tasks (denoise:
    ``{sigma: 25}``, jpeg: ``{quality: 20}``, deblur: ``{sigma, kernel_size, noise}``; None:
    the task's default).
    """

    metrics: list[str] | None = None
    protocol: dict[str, Any] | None = None


@dataclass
class CheckpointSettings:
    """The ``checkpoint:`` block: how often to save and what to keep.

    ``every``: steps between checkpoints (one is also written at the end, on SIGINT/SIGTERM/
    SIGHUP and when validation improves). ``every_minutes``: also save when this many minutes
    have passed since the last checkpoint (None: off). ``keep_last``: step checkpoints kept (0:
    all). ``keep_best``: also keep ``best.safetensors``, the checkpoint with the best validation
    metric (``train.best``; by default SR: PSNR, style: validation loss).
    """

    every: int = 1000
    every_minutes: float | None = None
    keep_last: int = 3
    keep_best: bool = True


@dataclass
class DataSettings:
    """The ``data:`` block: training and validation datasets, and the style image."""

    train: dict[str, Any] = field(default_factory=dict)
    val: dict[str, Any] | None = None
    style_image: str | list[str] | None = None  # a list: one per style of a multi-style net
    style_size: int | None = 256


TOP_LEVEL = ("name", "task", "transform", "loss_network", "losses", "data", "optimizer",
             "scheduler", "train", "checkpoint", "val", "discriminator", "optimizer_d",
             "scheduler_d")

#: Top-level keys that name one registered part, with the arguments percepkit supplies itself.
#: (``losses`` is a list of LOSSES parts; ``data.train`` / ``data.val`` are DATASETS parts.)
PART_BLOCKS: dict[str, tuple[Registry, tuple[str, ...]]] = {
    "transform": (TRANSFORMS, ()),
    "loss_network": (LOSS_NETWORKS, ()),
    "optimizer": (OPTIMIZERS, ("params",)),
    "scheduler": (SCHEDULERS, ("optimizer", "iterations")),
    # adversarial training (a `gan` term): the discriminator, its optimiser and schedule
    "discriminator": (DISCRIMINATORS, ()),
    "optimizer_d": (OPTIMIZERS, ("params",)),
    "scheduler_d": (SCHEDULERS, ("optimizer", "iterations")),
}
DATA_SPLITS = ("train", "val")


def normalise(raw: dict[str, Any]) -> dict[str, Any]:
    """Rewrite every part given by name alone as ``{name: ...}``, in place; returns ``raw``.

    ``transform: bicubic`` becomes ``transform: {name: bicubic}``, and likewise each item of
    ``losses``, ``loss_network``, ``optimizer``, ``scheduler``, ``data.train`` and ``data.val``.
    An empty settings block (``train:`` with nothing under it) becomes ``{}``.
    """
    for key in ("train", "checkpoint", "data", "val"):
        if key in raw and raw[key] is None:
            raw[key] = {}
    if isinstance(raw.get("train"), dict):
        _read_deprecated_amp(raw["train"])
        if isinstance(raw["train"].get("best"), str):  # train.best: lpips
            raw["train"]["best"] = {"metric": raw["train"]["best"]}
    for key in PART_BLOCKS:
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
    if isinstance(raw.get("losses"), list):
        raw["losses"] = [{"name": s} if isinstance(s, str) else s for s in raw["losses"]]
    data = raw.get("data")
    if isinstance(data, dict):
        for split in DATA_SPLITS:
            if isinstance(data.get(split), str):
                data[split] = {"name": data[split]}
    return raw


def _read_deprecated_amp(train: dict[str, Any]) -> None:
    """``train.amp`` / ``train.amp_dtype`` (percepkit 0.2) become ``train.precision``, with a
    one-line notice: ``amp: false`` is fp32; ``amp: true`` is the dtype given (bf16 or fp16)
    or ``auto``; they replace a ``precision`` beside them (so ``--set train.amp=false``
    works on a recipe that names a precision). Values of the wrong type are left for
    validation to report."""
    if "amp" not in train and "amp_dtype" not in train:
        return
    amp, dtype = train.pop("amp", True), train.pop("amp_dtype", None)
    if not isinstance(amp, bool) or dtype not in (None, "float16", "bfloat16"):
        train["amp"], train["amp_dtype"] = amp, dtype  # invalid: validate() names the key
        return
    name = "fp32" if not amp else {"float16": "fp16", "bfloat16": "bf16"}.get(dtype, "auto")
    train["precision"] = name
    warnings.warn(f"train.amp/train.amp_dtype are deprecated: read as train.precision: {name} "
                  f"(auto, fp32, bf16 or fp16)", FutureWarning, stacklevel=2)


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


#: Most values a recipe may expand to, counting every use of a YAML alias (a 1.5 KB "billion
#: laughs" file expands to 10^9); real recipes have a few hundred.
MAX_VALUES = 100_000


def _expanded_size(node: yaml.Node, memo: dict[int, int], active: set[int]) -> int:
    """Values ``node`` stands for once every alias is expanded (memoised: bombs stay cheap)."""
    key = id(node)
    if key in memo:
        return memo[key]
    if key in active:
        raise RecipeError("a YAML alias refers to itself (a recursive recipe)")
    active.add(key)
    if isinstance(node, yaml.SequenceNode):
        size = 1 + sum(_expanded_size(c, memo, active) for c in node.value)
    elif isinstance(node, yaml.MappingNode):
        size = 1 + sum(_expanded_size(k, memo, active) + _expanded_size(v, memo, active)
                       for k, v in node.value)
    else:
        size = 1
    active.discard(key)
    memo[key] = min(size, 10 * MAX_VALUES)  # saturate: the exact count of a bomb is moot
    return memo[key]


def parse_yaml(text: str, source: str = "<string>") -> Any:
    """Parse YAML safely; syntax errors name the file and line; alias bombs are refused."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        try:
            size = _expanded_size(node, {}, set())
        except RecipeError as e:
            raise RecipeError(f"{source}: {e}") from None
        if size > MAX_VALUES:
            raise RecipeError(f"{source}: the recipe expands to more than {MAX_VALUES:,} values "
                              f"through YAML aliases (&anchor / *alias); a recipe is a few "
                              f"hundred")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{source}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    finally:
        loader.dispose()


def read_recipe_text(path: Path) -> str:
    """A recipe file's text: UTF-8 (or UTF-16/32 with a byte-order mark); others are refused."""
    data = path.read_bytes()
    for bom, codec in ((b"\xef\xbb\xbf", "utf-8-sig"), (b"\xff\xfe\x00\x00", "utf-32"),
                       (b"\x00\x00\xfe\xff", "utf-32"), (b"\xff\xfe", "utf-16"),
                       (b"\xfe\xff", "utf-16")):
        if data.startswith(bom):
            return data.decode(codec)
    if b"\x00" in data[:4096]:
        raise RecipeError(f"{path}: a binary file, not a YAML recipe")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise RecipeError(f"{path} line {line}: not UTF-8 text (byte 0x{data[e.start]:02x}); "
                          f"save the recipe as UTF-8") from None


@dataclass
class Recipe:
    """A validated recipe: the raw mapping plus typed settings."""

    raw: dict[str, Any]
    source: str = "<recipe>"

    @property
    def name(self) -> str:
        return str(self.raw.get("name") or Path(self.source).stem)

    @property
    def task(self) -> str:
        """The task's name in :data:`percepkit.registry.TASKS` (default ``sr``)."""
        return self.raw.get("task", "sr")

    @property
    def loss_terms(self) -> list[str]:
        """The loss terms as ``name×weight`` (``feature×1``; ``pixel(l1)×1`` where a ``kind`` or
        ``criterion`` is set), in recipe order."""
        def how(s: Mapping[str, Any]) -> str:
            chosen = s.get("kind", s.get("criterion"))
            return f"({chosen})" if isinstance(chosen, str) else ""

        return [f"{s['name']}{how(s)}×{s.get('weight', 1.0):g}" if isinstance(s, Mapping)
                else f"{s}×1" for s in self.raw["losses"]]

    @property
    def train(self) -> TrainSettings:
        return TrainSettings(**self.raw.get("train", {}))

    @property
    def checkpoint(self) -> CheckpointSettings:
        return CheckpointSettings(**self.raw.get("checkpoint", {}))

    @property
    def data(self) -> DataSettings:
        return DataSettings(**self.raw.get("data", {}))

    @property
    def val(self) -> ValSettings:
        return ValSettings(**self.raw.get("val", {}))

    def to_yaml(self) -> str:
        """The resolved recipe as YAML text (stored in run dirs and checkpoints)."""
        return yaml.safe_dump(self.raw, sort_keys=False)

    # -- building ------------------------------------------------------------------------------
    def build_transform(self):
        """The transform network."""
        return TRANSFORMS.build(self.raw["transform"], where="transform")

    def build_loss(self):
        """The composite loss (building the loss network only if a term needs features)."""
        from ..losses import build_loss
        from ..losses.create import loss_network_for

        specs = self.raw["losses"]
        return build_loss(specs, loss_network_for(specs, self.raw.get("loss_network")))

    def build_optimizer(self, params):
        """The optimiser over ``params``."""
        return OPTIMIZERS.build(self.raw.get("optimizer", "adam"), where="optimizer",
                                params=params)

    def build_scheduler(self, optimizer):
        """The learning-rate schedule."""
        return SCHEDULERS.build(self.raw.get("scheduler", "constant"), where="scheduler",
                                optimizer=optimizer, iterations=self.train.iterations)


def load_recipe(path: str | Path, overrides: Sequence[str] = (), check_files: bool = False
                ) -> Recipe:
    """Load, normalise, override (``key.sub=value``) and validate a recipe file.

    ``check_files`` also requires the data folders and the style image to exist (what
    ``percepkit recipe check`` does unless told ``--skip-data``).
    """
    path = Path(path)
    if path.is_dir():
        raise RecipeError(f"{path}: is a folder; give a recipe file (.yaml)")
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    raw = parse_yaml(read_recipe_text(path), str(path))
    return recipe_from_mapping(raw, str(path), overrides, check_files)


def recipe_from_mapping(raw: Any, source: str = "<recipe>", overrides: Sequence[str] = (),
                        check_files: bool = False) -> Recipe:
    """Validate a recipe given as a mapping (e.g. from a checkpoint's metadata)."""
    if not isinstance(raw, Mapping):
        raise RecipeError(f"{source}: expected a mapping of recipe keys at the top level, "
                          f"got {type(raw).__name__}")
    raw = normalise(copy.deepcopy(dict(raw)))
    for item in overrides:
        apply_override(raw, item, source)
    normalise(raw)  # an override may name a part alone too: --set transform=bicubic
    try:
        problems = validate(raw)
    except MissingExtraError as e:  # e.g. a spandrel:* transform without spandrel installed
        raise MissingExtraError(f"{source}: {e}") from None
    if check_files and not problems:
        problems = missing_files(raw)
    if problems:
        listing = "".join(f"\n  - {p}" for p in problems)
        raise RecipeError(f"{source}: invalid recipe:{listing}")
    return Recipe(raw, source)


def apply_override(raw: dict, item: str, source: str = "<recipe>") -> None:
    """Apply ``a.b.c=value`` (value parsed as YAML; list items by index: ``losses.1.weight``)."""
    if "=" not in item:
        raise RecipeError(f"--set {item!r}: expected KEY.PATH=VALUE")
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise RecipeError(f"--set {key}: {'.'.join(parts[:i + 1])} is not an index of "
                                  f"a list of {len(node)}")
            node = node[int(part)]
        else:
            node = node.setdefault(part, [] if nxt.isdigit() else {})
    last = parts[-1]
    parsed = parse_yaml(value, f"--set {key}") if value.strip() else None
    if isinstance(node, list):
        if not last.isdigit() or int(last) > len(node):
            raise RecipeError(f"--set {key}: {last!r} is not an index of a list of {len(node)}")
        if int(last) == len(node):
            node.append(parsed)
        else:
            node[int(last)] = parsed
    elif isinstance(node, dict):
        node[last] = parsed
    else:
        raise RecipeError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping")


def _check_block(registry: Registry, spec: Any, where: str, supplied: Sequence[str] = ()
                 ) -> list[str]:
    try:
        name, kwargs = registry.resolve(spec, where=where)
        obj = registry.get(name)
    except PercepkitError as e:
        return [str(e)]
    bad = check_arguments(obj, kwargs, supplied)
    return [f"{where}: {p}" for p in bad]


def _check_settings(cls: type, value: Any, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, Mapping):
        return [f"{where}: expected a mapping with keys {', '.join(f.name for f in fields(cls))}"]
    return [f"{where}: {p}" for p in check_arguments(cls, value)]


def validate(raw: Mapping[str, Any]) -> list[str]:
    """All problems with a (normalised) recipe mapping, each naming its key path.

    Besides keys and types, this checks what training would reject later, without loading
    weights or building networks (:mod:`percepkit.recipes.checks`).
    """
    problems = []
    for key in raw:
        if key not in TOP_LEVEL:
            close = close_matches(str(key), TOP_LEVEL, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown top-level key {key!r}{hint}; expected some of "
                            f"{', '.join(TOP_LEVEL)}")
    for key in ("transform", "losses"):
        if key not in raw:
            problems.append(f"missing required key {key!r}")
    if "name" in raw and not isinstance(raw["name"], str):
        problems.append(f"name: expected a string, got {raw['name']!r}")
    task = _task_class(raw.get("task", "sr"), problems)
    for key, (registry, supplied) in PART_BLOCKS.items():
        if key in raw:
            problems += _check_block(registry, raw[key], key, supplied)
    losses = raw.get("losses")
    if losses is not None and (not isinstance(losses, list) or not losses):
        problems.append("losses: expected a non-empty list of {name: ..., weight: ...} terms")
    elif isinstance(losses, list):
        for i, spec in enumerate(losses):
            problems += _check_block(LOSSES, spec, f"losses[{i}]")
    problems += _check_settings(TrainSettings, raw.get("train"), "train")
    problems += _check_settings(CheckpointSettings, raw.get("checkpoint"), "checkpoint")
    problems += _check_settings(DataSettings, raw.get("data"), "data")
    problems += _check_settings(ValSettings, raw.get("val"), "val")
    if isinstance(raw.get("train"), Mapping):
        problems += _check_settings(BestSettings, raw["train"].get("best"), "train.best")
    data = raw.get("data") or {}
    if isinstance(data, Mapping):
        for split in DATA_SPLITS:
            if data.get(split):
                problems += _check_block(DATASETS, data[split], f"data.{split}")
    if task is not None:  # the task's own keys: data it needs, val.metrics, train.best
        problems += task.recipe_problems(raw)
    for where, ranges in RANGES.items():
        problems += _check_ranges(raw.get(where), where, ranges)
    return problems + check_parts(raw)


def _task_class(name: Any, problems: list[str]) -> Any:
    """The registered class of task ``name``, or None with the problem (did-you-mean) added."""
    if not isinstance(name, str):
        problems.append(f"task: expected a task name (percepkit list tasks), got {name!r}")
        return None
    try:
        return TASKS.get(name)
    except PercepkitError as e:
        problems.append(f"task: {e}")
        return None


#: Allowed ranges of numeric keys per block (None: unbounded); ``recipe check`` and the
#: recipe schema both use them. The batch size bound is far beyond any real run; it stops a
#: typo such as 1e12 before anything is allocated. Optimiser bounds are torch's own checks.
RANGES: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "train": {"iterations": (1, None), "batch_size": (1, 65536), "workers": (0, 1024),
              "log_every": (1, None), "sample_every": (1, None), "val_every": (1, None),
              "sample_images": (0, 1024), "val_images": (1, None), "grad_clip": (0, None),
              "ema": (0, 1), "d_steps": (1, None), "gan_start": (0, None)},
    "checkpoint": {"every": (1, None), "every_minutes": (0.1, None), "keep_last": (0, None)},
    "data": {"style_size": (1, None)},
    "optimizer": {"lr": (0, None), "eps": (0, None), "weight_decay": (0, None),
                  "momentum": (0, None)},
    "scheduler": {"warmup": (0, None), "gamma": (0, None), "min_factor": (0, 1)},
}
RANGES["optimizer_d"], RANGES["scheduler_d"] = RANGES["optimizer"], RANGES["scheduler"]


def _check_ranges(block: Any, where: str, ranges: Mapping[str, tuple]) -> list[str]:
    if not isinstance(block, Mapping):
        return []
    problems = []
    for key, (low, high) in ranges.items():
        value = block.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if (low is not None and value < low) or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f"at least {low}"
            problems.append(f"{where}.{key}: expected a value {bound}, got {value}")
    return problems


def expand_path(value: str) -> Path:
    """Expand ``~`` and environment variables in a recipe path."""
    return Path(os.path.expandvars(os.path.expanduser(value)))
