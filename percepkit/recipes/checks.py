"""What training would reject later, found in a recipe without loading weights or building networks.

:func:`check_parts` runs inside :func:`percepkit.recipes.recipe.validate` on blocks whose keys and
types are already valid (invalid blocks are reported once, by the key checks):

* the transform's own argument checks (``johnson_sr`` needs a power-of-two scale), by calling
  its constructor on torch's ``meta`` device, where no memory is allocated and no weights are
  read; and that the transform's task is the recipe's;
* layer names of VGG loss networks (known without weights: ``vgg_layer_names``), ranked so that
  ``relu1_3`` suggests ``relu1_2`` first, and ``layer_weights`` lengths;
* ``timm:<model>`` names against timm's list of models;
* datasets: an evaluation set (Set5, ...) is not a training set, SR datasets' scale is the
  transform's, and a ``degradations`` list names known steps with valid arguments and makes
  inputs of the size the scale needs.


* datasets: an evaluation set (Set5, ...) is not a training set, and SR datasets' scale is the
  transform's;
* adversarial training: a ``gan`` term has a ``discriminator`` that takes the training crops
  (``data.train``'s ``patch_size`` or ``size``), and discriminator settings come with a ``gan``
  term.

:func:`missing_files` (``percepkit recipe check`` unless ``--skip-data``) checks that data folders,
list files and the style image exist.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import MissingExtraError, PercepkitError
from ..registry import (
    DATASETS,
    DEFAULT_LOSS_NETWORK,
    DISCRIMINATORS,
    LOSS_NETWORKS,
    LOSSES,
    TASKS,
    TRANSFORMS,
    Entry,
    Registry,
)
from ..registry.arguments import arguments, built_class, check_arguments, close_matches

_VGG = ("vgg16", "vgg19")


def check_parts(raw: Mapping[str, Any]) -> list[str]:
    """Problems training would meet with the parts of a recipe (see the module docstring)."""
    problems, transform = _check_transform(raw)
    return (problems + _check_layers(raw) + _check_timm(raw) + _check_data(raw, transform)
            + _check_adversarial(raw))


def missing_files(raw: Mapping[str, Any]) -> list[str]:
    """Data folders, list files and the style image that do not exist (paths as training
    reads them: relative to the current directory, ``~`` and ``$VARS`` expanded)."""
    from .recipe import DATA_SPLITS, expand_path

    data = raw.get("data")
    if not isinstance(data, Mapping):
        return []
    where = f"recipe paths are relative to the current directory, {Path.cwd()}"
    problems = []
    for split in DATA_SPLITS:
        part = _resolved(DATASETS, data.get(split))
        if part is None:
            continue
        for key, value in part[1].items():
            is_path = key in ("root", "list_file", "meta_info") or key.endswith("_root")
            if is_path and isinstance(value, str) and not expand_path(value).exists():
                problems.append(f"data.{split}.{key}: {value}: no such folder, image or list "
                                f"file ({where})")
    styles = data.get("style_image")
    for style in styles if isinstance(styles, list) else [styles]:
        if isinstance(style, str) and style and not style.startswith("synthetic") \
                and not expand_path(style).is_file():
            problems.append(f"data.style_image: {style}: no such image file ({where})")
    return problems


def _resolved(registry: Registry, spec: Any, supplied: Sequence[str] = ()
              ) -> tuple[Entry, dict[str, Any]] | None:
    """The entry and keyword arguments of a valid block; None when the key checks reject it."""
    if spec is None:
        return None
    try:
        name, kwargs = registry.resolve(spec)
        entry = registry.entry(name)
    except PercepkitError:
        return None
    if check_arguments(entry.obj, kwargs, supplied):
        return None
    return entry, kwargs


def _check_transform(raw: Mapping[str, Any]) -> tuple[list[str], Any]:
    """Run the transform's constructor on the meta device; returns problems and the network."""
    part = _resolved(TRANSFORMS, raw.get("transform"))
    if part is None:
        return [], None
    entry, kwargs = part
    import torch

    try:
        with torch.device("meta"):
            net = entry.obj(**kwargs)
    except MissingExtraError:  # not a problem of the recipe: one line naming the install
        raise
    except (ValueError, PercepkitError) as e:
        return [f"transform: {e}"], None
    except Exception:  # code that needs real tensor values: training itself will tell
        return [], None
    task = _task(raw)
    problem = task.network_problem(net) if task is not None else None
    if problem:
        return [f"task: the recipe says {task.name!r} but transform {entry.name!r} is {problem}"
                ], net
    return [], net


def _task(raw: Mapping[str, Any]) -> Any:
    """The recipe's registered task class (None: unknown, reported by the task check)."""
    name = raw.get("task", "sr")
    if not isinstance(name, str) or name not in TASKS:
        return None
    return TASKS.get(name)


def term_layers(spec: Any) -> list[str]:
    """Loss-network layers a loss spec reads, as the term declares them (``reads_layers``);
    for a plugin factory without that, its ``layers`` argument or that argument's default."""
    if not isinstance(spec, Mapping):
        return []
    try:
        obj = LOSSES.get(spec.get("name", ""))
    except PercepkitError:
        return []
    if hasattr(obj, "reads_layers"):
        return list(obj.reads_layers(spec))
    from ..losses.base import layers_argument

    return list(layers_argument(obj, spec))


def _alternatives(names: Sequence[str]) -> str:
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _unknown_layers(layers: Any, known: list[str], arch: str, where: str) -> list[str]:
    problems = []
    for layer in layers if isinstance(layers, (list, tuple)) else []:
        if str(layer) not in known:
            close = close_matches(str(layer), known, n=3)
            hint = f" (did you mean {_alternatives(close)}?)" if close else ""
            problems.append(f"{where}: {arch} has no layer {layer!r}{hint}")
    return problems


def _check_layers(raw: Mapping[str, Any]) -> list[str]:
    """VGG layer names of the loss network and of every loss term; ``layer_weights`` lengths."""
    from ..nets.lossnets import vgg_layer_names

    net = _resolved(LOSS_NETWORKS, raw.get("loss_network", DEFAULT_LOSS_NETWORK))
    arch = net[0].name if net is not None else None
    known = vgg_layer_names(arch) if arch in _VGG else None
    problems = []
    if known is not None:
        problems += _unknown_layers(net[1].get("layers"), known, arch, "loss_network.layers")
    losses = raw.get("losses")
    for i, spec in enumerate(losses if isinstance(losses, list) else []):
        if _resolved(LOSSES, spec) is None:
            continue
        layers = term_layers(spec)
        if known is not None:
            problems += _unknown_layers(layers, known, arch, f"losses[{i}].layers")
        weights = spec.get("layer_weights")
        if isinstance(weights, list) and len(weights) != len(layers):
            problems.append(f"losses[{i}].layer_weights: {len(weights)} weights for "
                            f"{len(layers)} layers")
    return problems


def _check_timm(raw: Mapping[str, Any]) -> list[str]:
    """``timm:<model>``: the model must be one timm knows (no weights are looked at)."""
    part = _resolved(LOSS_NETWORKS, raw.get("loss_network"))
    if part is None or part[0].name != "timm" or not isinstance(part[1].get("model"), str):
        return []
    model = part[1]["model"]
    if ":" in model:  # hf-hub:..., local-dir:...: found by timm at build time, not listed
        return []
    try:
        import timm
    except ImportError:
        return ["loss_network: timm is not installed (pip install timm)"]
    if timm.is_model(model):
        return []
    close = close_matches(model, timm.list_models(), n=3)
    hint = f"did you mean {_alternatives(close)}? " if close else ""
    return [f"loss_network: timm has no model {model!r}; {hint}(timm.list_models() lists them)"]


def is_evaluation_set(obj: Any) -> bool:
    """Whether a registered dataset builds an SR benchmark (images one at a time, for
    ``data.val`` and ``percepkit eval``) rather than a training dataset."""
    from ..data.benchmark_sets import SRBenchmark

    cls = built_class(obj)
    return cls is not None and issubclass(cls, SRBenchmark)


def _check_data(raw: Mapping[str, Any], transform: Any) -> list[str]:
    """Training datasets that are evaluation sets; SR datasets whose scale is not the model's."""
    from .recipe import DATA_SPLITS

    data = raw.get("data")
    if not isinstance(data, Mapping):
        return []
    task = _task(raw)
    scale = getattr(transform, "scale", None) if task is not None and task.uses_scale else None
    problems = []
    for split in DATA_SPLITS:
        part = _resolved(DATASETS, data.get(split))
        if part is None:
            continue
        entry, kwargs = part
        if split == "train" and is_evaluation_set(entry.obj):
            training = [e.name for e in DATASETS.entries() if not is_evaluation_set(e.obj)]
            problems.append(f"data.train: {entry.name!r} is an evaluation set (for data.val or "
                            f"percepkit eval), not a training dataset; train on one of "
                            f"{', '.join(training)}")
            continue
        problems += _check_degradations(split, entry, kwargs)
        arg = next((a for a in arguments(entry.obj) if a.name == "scale"), None)
        if not isinstance(scale, int) or arg is None:
            continue
        value = kwargs.get("scale", None if arg.required else arg.default)
        if value is None:
            problems.append(f"data.{split}.scale: the {task.name} task needs LR/HR pairs; set "
                            f"scale: {scale} (the transform's scale)")
        elif value != scale:
            problems.append(f"data.{split}.scale: {value} is not the transform's scale {scale}")
    return problems


def _check_degradations(split: str, entry: Entry, kwargs: Mapping[str, Any]) -> list[str]:
    """A dataset's ``degradations`` list: known steps, valid arguments, the right output size."""
    from ..data.degradations import check_pipeline

    specs = kwargs.get("degradations")
    if specs is None:
        return []
    where = f"data.{split}.degradations"
    defaults = {a.name: a.default for a in arguments(entry.obj)}
    scale = kwargs.get("scale", defaults.get("scale"))
    size = kwargs.get("patch_size", defaults.get("patch_size", kwargs.get("size",
                                                                           defaults.get("size"))))
    problems = []
    if "blur_sigma" in kwargs:
        problems.append(f"data.{split}.blur_sigma: sets the built-in blur, which degradations "
                        f"replaces; add a {{name: gaussian_blur, sigma: ...}} step instead")
    ok = isinstance(scale, int) and isinstance(size, int) and scale >= 1 and size % scale == 0
    return problems + check_pipeline(specs, where, size if ok else None, scale if ok else None)


#: recipe blocks and train keys that only mean something with a ``gan`` term
ADVERSARIAL_BLOCKS = ("discriminator", "optimizer_d", "scheduler_d")
ADVERSARIAL_TRAIN = ("d_steps", "gan_start")


def gan_terms(losses: Any) -> list[int]:
    """Indices of the adversarial (``gan``) terms among a recipe's valid loss entries."""
    from ..losses.adversarial import GANLoss

    found = []
    for i, spec in enumerate(losses if isinstance(losses, list) else []):
        part = _resolved(LOSSES, spec)
        if part is not None and isinstance(part[0].obj, type) \
                and issubclass(part[0].obj, GANLoss):
            found.append(i)
    return found


def training_crop(raw: Mapping[str, Any]) -> tuple[str, int] | None:
    """``(key path, side)`` of the square training targets, from ``data.train``'s
    ``patch_size`` or ``size`` (given or default); None when the dataset has neither."""
    data = raw.get("data")
    part = _resolved(DATASETS, data.get("train")) if isinstance(data, Mapping) else None
    if part is None:
        return None
    entry, kwargs = part
    args = {a.name: a for a in arguments(entry.obj)}
    for key in ("patch_size", "size"):
        if key in args:
            value = kwargs.get(key, None if args[key].required else args[key].default)
            return (f"data.train.{key}", value) if isinstance(value, int) else None
    return None


def _check_adversarial(raw: Mapping[str, Any]) -> list[str]:
    """A ``gan`` term needs a discriminator that takes the training crops; discriminator
    settings need a ``gan`` term."""
    from ..nets.discriminators import input_problem

    losses = raw.get("losses")
    terms = gan_terms(losses)
    train = raw.get("train") if isinstance(raw.get("train"), Mapping) else {}
    extra = [k for k in ADVERSARIAL_BLOCKS if k in raw] + \
        [f"train.{k}" for k in ADVERSARIAL_TRAIN if k in train]
    if not terms:
        if not extra:
            return []
        return [f"{', '.join(extra)}: discriminator settings, but losses has no gan term; add "
                f"one (e.g. {{name: gan, weight: 5.0e-3, relativistic: true}}) or remove them"]
    problems = []
    if len(terms) > 1:
        problems.append(f"losses[{terms[1]}]: a second gan term; one discriminator trains "
                        f"against one objective, so a recipe has at most one")
    if "discriminator" not in raw:
        problems.append(f"losses[{terms[0]}]: the gan term needs a discriminator; add a "
                        f"'discriminator:' block (one of {', '.join(DISCRIMINATORS.list())}, "
                        f"e.g. {{name: unet}})")
    elif _resolved(DISCRIMINATORS, raw["discriminator"]) is not None:
        crop = training_crop(raw)
        if crop is not None:
            key, side = crop
            why = input_problem(raw["discriminator"], side, side)
            if why is not None:
                name = _resolved(DISCRIMINATORS, raw["discriminator"])[0].name
                problems.append(f"discriminator: {name} {why}: the training targets are "
                                f"{side}x{side} ({key}: {side}); change {key} or choose "
                                f"a discriminator that takes that size")
    others = [i for i, _ in enumerate(losses) if i not in terms]
    iterations = train.get("iterations", 1000)
    start = train.get("gan_start", 0)
    if isinstance(start, int) and not isinstance(start, bool) and start > 0:
        if not others:
            problems.append(f"train.gan_start: {start} warm-up steps train the generator "
                            f"without the gan term, but losses has no other term")
        if isinstance(iterations, int) and start >= iterations:
            problems.append(f"train.gan_start: {start} warm-up steps leave no adversarial "
                            f"step of train.iterations {iterations}")
    return problems
