"""Tasks: the restoration problems percepkit trains and evaluates, one class per task.

Every task is a :class:`Task` subclass registered in :data:`percepkit.registry.TASKS`; a recipe
names one (``task: sr``), ``percepkit eval --task NAME`` scores its benchmark protocol and
``percepkit list tasks [NAME]`` shows them. Built in: ``sr`` (super-resolution) and ``style``
(style transfer). A plugin adds one exactly as it adds a loss::

    from percepkit.registry import TASKS
    from percepkit.train.tasks import SRTask

    @TASKS.register("denoise")
    class DenoiseTask(SRTask):
        '''Gaussian denoising: ...'''
        network_tasks = ("sr",)     # image-to-image nets built at scale 1
        ...

Nothing outside the task classes asks which task it is: code reads these attributes and calls
these methods instead. ``name`` must be the registered name.

**Read without building anything** (recipe checks, the recipe schema, ``percepkit eval``,
``percepkit list tasks``, the task's own commands): class attributes and class methods.

- What a sample is: ``input_key`` / ``target_key`` (keys of a training or validation item; the
  same key when input and target are one image), ``uses_scale`` (the data's ``scale`` must be
  the transform's), ``required_data`` (``data.*`` keys the recipe must set, with what they are),
  :meth:`Task.memory_images` (images made before the first step, for the memory check). In
  training the dataset makes the input from the target (its ``degradations``); in evaluation
  :meth:`Task.eval_input` does.
- Which networks fit: ``network_tasks`` (the ``task`` attributes of transforms this task trains),
  :meth:`Task.network_problem` (why a network does not fit a recipe or ``eval --task``) and
  :meth:`Task.runs` (strict: what ``upscale``/``stylize`` accept).
- Validation: ``default_val_metrics`` (``val.metrics`` when the recipe names none; registered
  metrics), ``own_values`` (values the task computes itself, e.g. style's ``loss``, name ->
  higher is better) and ``default_best`` (what picks ``best.safetensors`` unless ``train.best``
  says otherwise). :meth:`Task.recipe_problems` checks a recipe's task-specific keys.
- Evaluation (``percepkit eval --task NAME``): ``protocol`` (its name, written into results files;
  None: the task has no benchmark protocol), ``protocol_summary``, ``eval_baseline`` (the
  transform scored when no model is given: SR scores bicubic), ``eval_metrics`` / ``eval_channel``
  (the protocol's default ``--metrics`` and ``--channel``), :meth:`Task.eval_scale`,
  :meth:`Task.eval_crop_border`, :meth:`Task.eval_input` (how the degraded input of one
  benchmark image is made; SR: the set's MATLAB-bicubic LR) and
  :meth:`Task.eval_data_convention` (the exact statement written into results files).
- The optimisation baseline (``percepkit optimize``): ``optimize_losses``,
  ``optimize_iterations``, :meth:`Task.optimize_check`, :meth:`Task.optimize_image`.
- ``title``: the task in words, for messages.

**One object per training run** (``Task(recipe, device)``, :func:`make_task`):
:meth:`~Task.check_train_item`, :meth:`~Task.setup` (calls :meth:`~Task.build_val_metrics`),
:meth:`~Task.unpack` (a batch to ``(input, target)``), :meth:`~Task.val_columns`,
:meth:`~Task.validate` (built on :meth:`~Task.val_pair`: the 8-bit output and the reference it
is compared with, and :meth:`~Task.metric_arguments`: border crop and per-metric arguments),
:meth:`~Task.baseline`, :meth:`~Task.preview` and :meth:`~Task.better`. ``metric`` and
``higher_is_better`` are the run's best-checkpoint metric and its direction; ``val_metrics``
the registered metrics it validates.

Checkpoints record ``recipe.task``; :func:`check_checkpoint_task` refuses one trained for another
task (``eval --task``, ``train.init``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import PercepkitError, RecipeError
from ..inference.gatys import SR_LOSSES, STYLE_LOSSES
from ..recipes.recipe import Recipe, expand_path
from ..registry import METRICS, TASKS
from ..registry.arguments import built_class, close_matches

Item = Mapping[str, Any]


def metric_direction(name: str, own_values: Mapping[str, bool] | None = None) -> bool | None:
    """Whether a higher value of ``name`` is better: a task's own value, or the registered
    metric's ``higher_is_better`` (None: unknown name, or a metric that does not declare it)."""
    if own_values and name in own_values:
        return bool(own_values[name])
    try:
        obj = METRICS.get(name)
    except PercepkitError:
        return None
    value = getattr(built_class(obj), "higher_is_better", None)
    return None if value is None else bool(value)


def _best_spec(raw: Mapping[str, Any]) -> Any:
    train = raw.get("train")
    return train.get("best") if isinstance(train, Mapping) else None


def _val_names(raw: Mapping[str, Any]) -> Any:
    val = raw.get("val")
    return val.get("metrics") if isinstance(val, Mapping) else None


class Task(ABC):
    """A restoration problem: what a sample is, how the input is made from the target, what
    validation compares, what eval reports; a subclass per task, registered in ``TASKS``."""

    name: ClassVar[str]               # the registered name
    title: ClassVar[str] = ""         # in words, for messages ("super-resolution")
    input_key: ClassVar[str]          # the network input in a training/validation item
    target_key: ClassVar[str]         # the target in a training/validation item
    network_tasks: ClassVar[tuple[str, ...]] = ()  # transform `task` attributes it trains
    uses_scale: ClassVar[bool] = False  # the data's scale must be the transform's
    required_data: ClassVar[Mapping[str, str]] = {}  # data.<key>: what it must name
    validates_on_previews: ClassVar[bool] = False  # validate without data.val
    default_val_metrics: ClassVar[tuple[str, ...]] = ()
    own_values: ClassVar[Mapping[str, bool]] = {}  # computed by the task: higher is better?
    default_best: ClassVar[str]
    # percepkit eval --task NAME
    protocol: ClassVar[str | None] = None
    protocol_summary: ClassVar[str] = ""
    eval_baseline: ClassVar[str] = "bicubic"
    eval_metrics: ClassVar[tuple[str, ...]] = ("psnr", "ssim", "lpips")
    eval_channel: ClassVar[str] = "y"
    # percepkit optimize (the optimisation baseline of Gatys et al.)
    optimize_losses: ClassVar[tuple[Mapping[str, Any], ...]] = ()
    optimize_iterations: ClassVar[int] = 200

    def __init__(self, recipe: Recipe, device: torch.device) -> None:
        self.recipe, self.device = recipe, device
        self.val_metrics, metric, higher = self.selection(recipe.raw)
        if higher is None:
            raise RecipeError(f"train.best: metric {metric!r} does not declare whether higher "
                              f"is better; set train.best.mode: min or max")
        self.metric: str = metric
        self.higher_is_better: bool = higher
        self.metrics: dict[str, Any] = {}
        self.infos: list[Any] = []

    # -- read without building anything ----------------------------------------------------------
    @classmethod
    def selection(cls, raw: Mapping[str, Any]) -> tuple[list[str], str, bool | None]:
        """``(registered metrics validated, best metric, higher is better)`` of a valid
        recipe: ``val.metrics`` (default ``default_val_metrics``) and ``train.best`` (default:
        ``default_best`` if validated, else the first validated value); the direction from
        ``train.best.mode``, else from the metric (None: undeclared)."""
        named = _val_names(raw)
        metrics = list(dict.fromkeys(n for n in (named if named is not None
                                                 else cls.default_val_metrics)
                                     if n not in cls.own_values))  # each once, in order
        best = _best_spec(raw) or {}
        metric = best.get("metric")
        if metric is None:
            validated = [*cls.own_values, *metrics]
            metric = cls.default_best if cls.default_best in validated or not validated \
                else validated[0]
        mode = best.get("mode") or "auto"
        higher = {"max": True, "min": False}.get(mode, metric_direction(metric, cls.own_values))
        return metrics, metric, higher

    @classmethod
    def network_problem(cls, net: Any) -> str | None:
        """Why ``net`` cannot be trained or scored for this task, or None. ``net`` is a built
        network (an ``nn.Module``), or a registered class or factory not built yet: those are
        judged only by a ``task`` they declare (what a built one has, its scale, is checked once
        it is built)."""
        task = getattr(net, "task", None)
        if task is None or not cls.network_tasks or task in cls.network_tasks:
            return None
        return f"a {task!r} network, not one for the {cls.name!r} task"

    @classmethod
    def runs(cls, net: Any) -> bool:
        """Whether ``net`` declares itself one of this task's networks (its ``task`` attribute
        is in ``network_tasks``): what the task's own commands (upscale, stylize) accept."""
        return getattr(net, "task", None) in cls.network_tasks

    @classmethod
    def recipe_problems(cls, raw: Mapping[str, Any]) -> list[str]:
        """Problems of a recipe's task-specific keys: ``required_data``, ``val.metrics`` and
        ``train.best`` (each with its key path)."""
        problems = []
        data = raw.get("data") or {}
        if isinstance(data, Mapping):
            for key, what in cls.required_data.items():
                if not data.get(key):
                    problems.append(f"data.{key}: a {cls.name} recipe needs {what}")
        names = _val_names(raw)
        if names is not None and (not isinstance(names, list)
                                  or not all(isinstance(n, str) for n in names)):
            return problems + [f"val.metrics: expected a list of metric names "
                               f"(percepkit list metrics), got {names!r}"]
        if names == [] and not cls.own_values:
            problems.append("val.metrics: an empty list; name at least one metric (percepkit "
                            "list metrics), or leave it out for the task's default")
        validated = list(cls.default_val_metrics) if names is None else list(names)
        for i, name in enumerate(names or []):
            if name in cls.own_values:
                continue
            try:
                METRICS.entry(name)
            except PercepkitError as e:
                problems.append(f"val.metrics[{i}]: {e}")
        best = _best_spec(raw)
        if not isinstance(best, Mapping) or not isinstance(best.get("metric"), str):
            return problems  # missing/mistyped keys: the train.best settings check says so
        metric, mode = best["metric"], best.get("mode") or "auto"
        allowed = [*cls.own_values, *validated]
        if metric not in allowed:
            close = [] if metric in METRICS else \
                close_matches(metric, [*allowed, *METRICS.names()], n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"train.best.metric: {metric!r} is not validated{hint}; add it to "
                            f"val.metrics (now: {', '.join(allowed) or 'none'})")
        elif mode == "auto" and metric_direction(metric, cls.own_values) is None:
            problems.append(f"train.best: metric {metric!r} does not declare whether higher "
                            f"is better; set train.best.mode: min or max")
        return problems

    @classmethod
    def memory_images(cls, recipe: Recipe) -> list[tuple[int, str]]:
        """Images made before the first step besides the data's: ``(side, recipe key)``."""
        return []

    @classmethod
    def eval_scale(cls, scale: int | None) -> int:
        """The scale ``percepkit eval`` builds the benchmark sets at (``--scale``, if given)."""
        return 1 if scale is None else scale

    @classmethod
    def eval_crop_border(cls, scale: int) -> int:
        """Pixels cropped at each border before PSNR/SSIM-like metrics."""
        return 0

    @classmethod
    def eval_data_convention(cls, scale: int) -> str | None:
        """The exact statement of how the protocol makes inputs and targets (results files'
        ``convention.data``); None: the SR statement of :mod:`percepkit.evaluation.evaluate`
        (MATLAB-bicubic LR, or the given ``--lr-dir`` files)."""
        return None

    @classmethod
    def eval_input(cls, sample: Any, set_name: str) -> torch.Tensor:
        """The model's input for one benchmark image (``sample.hr`` the target); seed anything
        random from ``set_name`` and ``sample.name`` so every run scores the same inputs."""
        return sample.lr

    @classmethod
    def with_level(cls, **level: Any) -> type[Task]:
        """The task at a level of its protocol (``percepkit eval --sigma 25``, ``--quality
        20``; None values: not given); tasks without levels refuse any."""
        given = [k for k, v in level.items() if v is not None]
        if given:
            raise PercepkitError(f"--{given[0]} does not apply to the {cls.name} task (it sets "
                                 f"the level of the denoise/deblur/jpeg protocols)")
        return cls

    @classmethod
    def optimize_check(cls, *, style: Any, scale: int | None, target: Any, inputs: int) -> None:
        """Raise :class:`PercepkitError` when ``percepkit optimize``'s options do not fit."""
        raise PercepkitError(f"the {cls.name} task has no optimisation baseline "
                             f"(percepkit optimize)")

    @classmethod
    def optimize_image(cls, image: torch.Tensor, loss: nn.Module, **options: Any) -> Any:
        """``percepkit optimize`` of one image (3xHxW): an
        :class:`~percepkit.inference.gatys.OptimizeResult`. ``options``: ``style``, ``scale``,
        ``target``, ``iterations``, ``method``, ``lr``, ``init``, ``seed``, ``callback``,
        ``precision``, ``project`` (each task takes what it needs)."""
        raise PercepkitError(f"the {cls.name} task has no optimisation baseline "
                             f"(percepkit optimize)")

    # -- one object per training run ------------------------------------------------------------
    @abstractmethod
    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        """Raise :class:`RecipeError` if a training item does not fit this task."""

    @abstractmethod
    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        """Prepare what validation and the loss need before the first step (subclasses call
        :meth:`build_val_metrics`)."""

    def before_step(self, step: int) -> None:  # noqa: B027 (a hook: most tasks need nothing)
        """Called before training step ``step`` (a multi-style net switches style here)."""

    def unpack(self, batch: Item) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)`` of a training batch (the same object when they are one)."""
        return batch[self.input_key], batch[self.target_key]

    def metric_arguments(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``(crop_border, per-metric arguments)`` the validation metrics are built with."""
        return 0, {}

    def build_val_metrics(self) -> None:
        """Build ``val_metrics`` on the device; a metric that cannot be built is an error."""
        from ..evaluation.evaluate import build_metrics

        crop, extra = self.metric_arguments()
        self.metrics, self.infos = build_metrics(self.val_metrics, crop_border=crop, extra=extra,
                                                 device=self.device)
        for info in self.infos:
            if info.unavailable:
                raise PercepkitError(f"val.metrics: {info.name} is not available: "
                                     f"{info.unavailable}")

    def val_columns(self, terms: Sequence[str]) -> list[str]:
        """The metric columns of ``val.csv``: the task's own values, then ``val.metrics``."""
        return [*self.own_values, *self.val_metrics]

    def val_pair(self, model: nn.Module, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        """The 8-bit-rounded output (CxHxW, CPU) for one validation item and its reference."""
        from ..evaluation.evaluate import run_transform

        return run_transform(model, item[self.input_key], self.device), item[self.target_key]

    @torch.no_grad()
    def validate(self, model: nn.Module, items: Sequence[Item]) -> dict[str, float]:
        """Mean validation values of ``model`` on ``items`` (``metric`` among them), each
        metric computed as ``percepkit eval`` computes it."""
        from ..evaluation.evaluate import score_pair

        values: dict[str, list[float]] = {k: [] for k in self.val_metrics}
        for item in items:
            out, ref = self.val_pair(model, item)
            for k, v in score_pair(self.metrics, self.infos, out, ref).items():
                values[k].append(math.nan if v is None else v)
        return {k: float(np.mean(v)) for k, v in values.items()}

    def baseline(self, items: Sequence[Item]) -> str | None:
        """A line about a reference result to beat, shown before training (or None)."""
        return None

    @abstractmethod
    def preview(self, model: nn.Module, previews: Sequence[Item], val_items: Sequence[Item],
                step: int) -> torch.Tensor:
        """The preview grid (3xHxW) of ``step``."""

    def better(self, value: float, best: float | None) -> bool:
        """Whether validation ``value`` beats ``best``; a non-finite value never does."""
        if not math.isfinite(value):
            return False
        if best is None:
            return True
        return value > best if self.higher_is_better else value < best


@TASKS.register("sr")
class SRTask(Task):
    """Super-resolution: LR input (MATLAB bicubic of the HR), HR target; PSNR/SSIM on Y.

    A sample is ``{"lr", "hr"}`` with HR = scale x LR (``sr_patches``, ``paired_folder``, the
    benchmark sets). Validation and ``percepkit eval`` score the 8-bit output against the HR:
    PSNR/SSIM on BT.601 Y with a border of ``scale`` pixels cropped, LPIPS on the whole RGB
    image, ``grid``/``blobs`` for artifacts; best.safetensors is picked by PSNR unless
    ``train.best`` says otherwise. Its protocol ``sr_bicubic`` is that of published SR tables
    (Set5/Set14/BSD100, HR mod-cropped to the scale, LR = MATLAB imresize bicubic).
    """

    name, title = "sr", "super-resolution"
    input_key, target_key = "lr", "hr"
    network_tasks = ("sr",)
    uses_scale = True
    default_val_metrics = ("psnr", "ssim", "grid", "blobs")
    default_best = "psnr"
    protocol = "sr_bicubic"
    protocol_summary = ("LR = MATLAB imresize(HR, 1/scale) bicubic, 8-bit; PSNR/SSIM on Y with "
                        "a border of scale px cropped; LPIPS on the whole RGB image")
    eval_baseline = "bicubic"
    optimize_losses = tuple(SR_LOSSES)
    optimize_iterations = 200

    @classmethod
    def network_problem(cls, net: Any) -> str | None:
        problem = super().network_problem(net)
        if problem is None and isinstance(net, nn.Module) and getattr(net, "scale", None) is None:
            problem = "not a super-resolution network (it has no scale)"
        return problem

    @classmethod
    def eval_scale(cls, scale: int | None) -> int:
        return 4 if scale is None else scale

    @classmethod
    def eval_crop_border(cls, scale: int) -> int:
        return scale

    @classmethod
    def optimize_check(cls, *, style: Any, scale: int | None, target: Any, inputs: int) -> None:
        if scale is None:
            raise PercepkitError("super-resolution needs --scale N")
        if target is not None and inputs != 1:
            raise PercepkitError("--target is for super-resolution of one input image")

    @classmethod
    def optimize_image(cls, image: torch.Tensor, loss: nn.Module, **options: Any) -> Any:
        """Super-resolve by optimisation (:func:`percepkit.inference.gatys.upscale`)."""
        from ..inference.gatys import upscale

        o = options
        return upscale(image, o["scale"], loss, target=o.get("target"),
                       iterations=o["iterations"], method=o["method"], lr=o.get("lr"),
                       callback=o.get("callback"), precision=o.get("precision"),
                       project=o.get("project", False))

    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        if not {"lr", "hr"} <= set(item):
            raise RecipeError(f"data.train: the sr task needs a dataset yielding 'lr' and 'hr' "
                              f"(e.g. sr_patches), but {dataset} yields {sorted(item)}")
        scale = getattr(module, "scale", None)
        if scale and item["hr"].shape[-1] != item["lr"].shape[-1] * scale:
            raise RecipeError(f"data.train: {dataset} gives LR {tuple(item['lr'].shape[-2:])} "
                              f"for HR {tuple(item['hr'].shape[-2:])}, but the transform "
                              f"upscales x{scale}; make data.train.scale match")

    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        self.scale = int(getattr(module, "scale", 1))
        self.build_val_metrics()

    def metric_arguments(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """PSNR/SSIM (and SSIM-like metrics) crop ``scale`` pixels, as eval; ``grid`` looks at
        period ``scale``; the artifact metrics see the whole image."""
        return self.scale, {"grid": {"period": max(2, self.scale), "crop_border": 0},
                            "blobs": {"crop_border": 0}}

    def baseline(self, items: Sequence[Item]) -> str | None:
        from ..nets.transforms import Bicubic

        base = self.validate(Bicubic(self.scale), items)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in base.items())
        return f"validation baseline (bicubic) on {len(items)} image(s): {shown}"

    def preview(self, model: nn.Module, previews: Sequence[Item], val_items: Sequence[Item],
                step: int) -> torch.Tensor:
        """One row per preview image: bicubic, the network's output, the target."""
        from ..data.images import image_grid
        from ..nets.transforms import Bicubic

        bicubic = Bicubic(self.scale)
        rows = []
        for i, item in enumerate(previews):
            lr = item["lr"][None]
            out = model(lr.to(self.device)).float().cpu().clamp(0, 1)[0]
            labels = ["bicubic", f"step {step}", "target"] if i == 0 else None
            rows.append(image_grid([bicubic(lr)[0].clamp(0, 1), out, item["hr"]], labels))
        return stack_rows(rows)


@TASKS.register("style")
class StyleTask(Task):
    """Style transfer: the content image is input and content target; validated by the loss.

    A sample is ``{"image"}`` (``image_folder``); ``data.style_image`` gives the style targets.
    A multi-style net (``transform.styles``: names) takes a list of style images, one per name,
    and trains style ``step % n`` at step ``step`` (every batch one style, as Dumoulin et al.
    2017; deterministic, so a resumed run continues exactly); validation averages the styles.
    Validation reports the loss and its terms on the validation (or preview) images, and the
    artifact metrics of the 8-bit outputs against the content (``grid`` at period 4, ``blobs``);
    best.safetensors is the lowest loss unless ``train.best`` says otherwise. There is no
    benchmark protocol (``percepkit eval`` scores restoration tasks).
    """

    name, title = "style", "style transfer"
    input_key = target_key = "image"
    network_tasks = ("style",)
    required_data = {"style_image": "a style image path (a list: one per transform.styles)"}
    validates_on_previews = True
    default_val_metrics = ("grid", "blobs")
    own_values = {"loss": False}
    default_best = "loss"
    optimize_losses = tuple(STYLE_LOSSES)
    optimize_iterations = 500

    @classmethod
    def memory_images(cls, recipe: Recipe) -> list[tuple[int, str]]:
        size = recipe.data.style_size
        return [(int(size), "data.style_size")] if size else []

    @classmethod
    def optimize_check(cls, *, style: Any, scale: int | None, target: Any, inputs: int) -> None:
        if style is None:
            raise PercepkitError("a style recipe needs --style STYLE")
        if target is not None:
            raise PercepkitError("--target is for super-resolution of one input image")

    @classmethod
    def optimize_image(cls, image: torch.Tensor, loss: nn.Module, **options: Any) -> Any:
        """Stylise by optimisation (:func:`percepkit.inference.gatys.stylize`)."""
        from ..inference.gatys import stylize

        o = options
        return stylize(image, o["style"], loss, iterations=o["iterations"], method=o["method"],
                       lr=o.get("lr"), init=o.get("init", "content"), seed=o.get("seed", 0),
                       callback=o.get("callback"), precision=o.get("precision"),
                       project=o.get("project", False))

    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        if "image" not in item:
            raise RecipeError(f"data.train: the style task needs a dataset yielding 'image' (e.g. "
                              f"image_folder), but {dataset} yields {sorted(item)}")

    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        """Load the style image(s) and give the loss its style targets."""
        data = self.recipe.data
        paths = data.style_image if isinstance(data.style_image, list) else [data.style_image]
        self.style_names: list[str] = list(getattr(module, "style_names", []))
        if len(paths) != max(1, len(self.style_names)):
            raise RecipeError(
                f"data.style_image: {len(paths)} image(s), but the transform has "
                + (f"{len(self.style_names)} styles ({', '.join(self.style_names)}): give one "
                   "image per style, in that order" if self.style_names else
                   "one style: give it `styles: [name, ...]` (one name per image) to train "
                   "several styles in one net"))
        images = [load_style_image(p, data.style_size) for p in paths]
        self.style_terms = [loss.styled_terms(im.to(self.device)) for im in images]
        self.module, self.loss, self.style_images = module, loss, [im[0] for im in images]
        self.use_style(0, module)
        self.build_val_metrics()

    def use_style(self, index: int, model: nn.Module) -> None:
        """Train or validate style ``index``: its targets in the loss, its blend in ``model``."""
        self.loss.use_terms(self.style_terms[index])
        if self.style_names:
            from ..nets.conditional import select_style

            select_style(model, torch.nn.functional.one_hot(
                torch.tensor(index), len(self.style_names)).float())

    def before_step(self, step: int) -> None:
        if self.style_names:
            self.use_style(step % len(self.style_names), self.module)

    def metric_arguments(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """``grid`` at period 4 (the style net's upsampling stride)."""
        return 0, {"grid": {"period": 4}}

    def val_columns(self, terms: Sequence[str]) -> list[str]:
        return ["loss", *terms, *self.val_metrics]

    @torch.no_grad()
    def validate(self, model: nn.Module, items: Sequence[Item]) -> dict[str, float]:
        """The mean loss and loss terms on the validation images, and ``val.metrics`` of the
        8-bit outputs against the content image."""
        from ..data.images import quantize
        from ..evaluation.evaluate import score_pair

        rows: list[list[float]] = []
        for index in range(len(self.style_terms)):
            self.use_style(index, model)
            for item in items:
                x = item["image"][None].to(self.device)
                y = model(x)
                total, parts = self.loss(y, x)
                out, content = quantize(y.float().cpu())[0], x.float().cpu()[0]
                scores = score_pair(self.metrics, self.infos, out, content)
                rows.append([float(total), *(float(v) for v in parts.values()),
                             *(math.nan if scores[k] is None else scores[k]
                               for k in self.val_metrics)])
        mean = np.mean(np.array(rows), axis=0).tolist()
        names = ["loss", *self.loss.terms.keys(), *self.val_metrics]
        return dict(zip(names, mean))

    def preview(self, model: nn.Module, previews: Sequence[Item], val_items: Sequence[Item],
                step: int) -> torch.Tensor:
        """Contents above the stylised contents, each row ending with its style image."""
        from ..data.images import image_grid

        items = val_items or previews
        h = items[0]["image"].shape[-2]
        rows = [image_grid([it["image"] for it in items], ["content"] * len(items), height=h)]
        for index, style in enumerate(self.style_images):
            self.use_style(index, model)
            outs = [model(it["image"][None].to(self.device)).float().cpu().clamp(0, 1)[0]
                    for it in items]
            name = self.style_names[index] if self.style_names else "style"
            rows.append(image_grid([*outs, style], [f"step {step}"] * len(outs) + [name],
                                   height=h))
        return stack_rows(rows)


def task_class(name: str, where: str = "task") -> type[Task]:
    """The registered task class ``name``; unknown names are a :class:`RecipeError` with
    did-you-mean hints."""
    try:
        return TASKS.get(name)  # type: ignore[return-value]
    except PercepkitError as e:
        raise RecipeError(f"{where}: {e}") from None


def make_task(recipe: Recipe, device: torch.device) -> Task:
    """The task object of ``recipe.task``."""
    return task_class(recipe.task)(recipe, device)


def checkpoint_task(path: str | Path) -> str | None:
    """The task a percepkit checkpoint (or zoo file) was trained for (None: not recorded)."""
    from ..models.checkpoint import Checkpoint, is_checkpoint

    path = Path(path)
    if not path.is_file() or not is_checkpoint(path):
        return None
    return Checkpoint.read(path, tensors=False).task


def check_checkpoint_task(path: str | Path, task: str, where: str) -> None:
    """Raise :class:`PercepkitError` (one paragraph) when the checkpoint at ``path`` was
    trained for another task than ``task``, which ``where`` (a recipe, ``--task``) asks for."""
    trained = checkpoint_task(path)
    if trained is not None and trained != task:
        raise PercepkitError(
            f"{path}: this checkpoint was trained for the {trained!r} task, but {where} is for "
            f"the {task!r} task; use a {task} checkpoint, or set the task to {trained!r}")


def stack_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack 3xHxW grids vertically (white padding to the widest)."""
    width = max(r.shape[-1] for r in rows)
    out = [torch.nn.functional.pad(r, (0, width - r.shape[-1]), value=1.0) for r in rows]
    return torch.cat(out, dim=-2)


def load_style_image(spec: str, size: int | None) -> torch.Tensor:
    """The style image (1, 3, H, W): a file (shorter side resized to ``size``) or ``synthetic[:N]``.

    ``synthetic:N`` is a procedural texture from :func:`percepkit.data.datasets.synthetic_image`
    (for tests and tiny recipes that must not depend on files).
    """
    from ..data.datasets import synthetic_image
    from ..data.images import resize_shorter_side

    if spec == "synthetic" or spec.startswith("synthetic:"):
        seed = int(spec.split(":", 1)[1]) if ":" in spec else 0
        return synthetic_image(size or 256, seed)[None]
    from ..data.images import read_image

    try:
        img = read_image(expand_path(spec))
    except PercepkitError as e:
        raise PercepkitError(f"data.style_image: {e} (recipe paths are relative to the current "
                             f"directory, {Path.cwd()})") from None
    return (resize_shorter_side(img, size) if size else img)[None]
