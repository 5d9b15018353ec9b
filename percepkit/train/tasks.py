"""Training tasks: what differs between SR and style training, one class per task.

A task says how a training batch becomes ``(input, target)``, what training and validation
items must hold, what validation computes and which value is better, what a preview grid shows
and what it needs before training (the style task: the style image's targets). The trainer
picks the task from :data:`TASKS` by ``recipe.task``; a new task with the same losses (e.g.
denoising) is one new class added there.
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
from ..recipes.recipe import Recipe, expand_path

Item = Mapping[str, Any]


class Task(ABC):
    """The task-specific part of training; a subclass per task, listed in :data:`TASKS`."""

    name: ClassVar[str]
    metric: ClassVar[str]             # the validation value that decides "best"
    higher_is_better: ClassVar[bool]
    input_key: ClassVar[str]          # the network input in a validation item
    validates_on_previews: ClassVar[bool] = False  # validate without data.val

    def __init__(self, recipe: Recipe, device: torch.device) -> None:
        self.recipe, self.device = recipe, device

    @abstractmethod
    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        """Raise :class:`RecipeError` if a training item does not fit this task."""

    @abstractmethod
    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        """Prepare what validation and the loss need before the first step."""

    @abstractmethod
    def unpack(self, batch: Item) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input, target)`` of a training batch (the same object when they are one)."""

    @abstractmethod
    def val_columns(self, terms: Sequence[str]) -> list[str]:
        """The metric columns of ``val.csv``."""

    @abstractmethod
    def validate(self, model: nn.Module, items: Sequence[Item]) -> dict[str, float]:
        """Validation metrics of ``model`` on ``items`` (``metric`` among them)."""

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


class SRTask(Task):
    """Super-resolution: LR input, HR target; validated by PSNR/SSIM as ``percepkit eval``."""

    name = "sr"
    metric = "psnr"
    higher_is_better = True
    input_key = "lr"

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

    def unpack(self, batch: Item) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["lr"], batch["hr"]

    def val_columns(self, terms: Sequence[str]) -> list[str]:
        return ["psnr", "ssim", "grid", "blobs"]

    @torch.no_grad()
    def validate(self, model: nn.Module, items: Sequence[Item]) -> dict[str, float]:
        """Mean PSNR/SSIM (Y, border = scale), grid (period = scale) and blobs, exactly as
        ``percepkit eval`` computes them."""
        from ..evaluation.evaluate import run_transform
        from ..metrics import blobs, grid, psnr, ssim

        fns = {"psnr": psnr(crop_border=self.scale), "ssim": ssim(crop_border=self.scale),
               "grid": grid(period=max(2, self.scale)), "blobs": blobs()}
        values: dict[str, list[float]] = {k: [] for k in fns}
        for item in items:
            out = run_transform(model, item["lr"], self.device)[None]
            hr = item["hr"][None]
            for k, fn in fns.items():
                values[k].append(float(fn(out, hr)[0]))
        return {k: float(np.mean(v)) for k, v in values.items()}

    def baseline(self, items: Sequence[Item]) -> str | None:
        from ..nets.transforms import Bicubic

        base = self.validate(Bicubic(self.scale), items)
        return (f"validation baseline (bicubic): PSNR {base['psnr']:.2f} dB, "
                f"SSIM {base['ssim']:.4f} on {len(items)} image(s)")

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


class StyleTask(Task):
    """Style transfer: the content image is input and content target; validated by the loss."""

    name = "style"
    metric = "loss"
    higher_is_better = False
    input_key = "image"
    validates_on_previews = True

    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        if "image" not in item:
            raise RecipeError(f"data.train: the style task needs a dataset yielding 'image' (e.g. "
                              f"image_folder), but {dataset} yields {sorted(item)}")

    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        """Load the style image and give the loss its style targets."""
        data = self.recipe.data
        style = load_style_image(data.style_image, data.style_size)
        loss.set_style(style.to(self.device))
        self.loss, self.style_image = loss, style[0]

    def unpack(self, batch: Item) -> tuple[torch.Tensor, torch.Tensor]:
        return batch["image"], batch["image"]

    def val_columns(self, terms: Sequence[str]) -> list[str]:
        return ["loss", *terms, "grid", "blobs"]

    @torch.no_grad()
    def validate(self, model: nn.Module, items: Sequence[Item]) -> dict[str, float]:
        """The mean loss and loss terms on the validation images, and the artifact metrics of
        the 8-bit outputs: grid (period 4) and blobs against the content image."""
        from ..data.images import quantize
        from ..metrics import blobs, grid

        artifacts = {"grid": grid(period=4), "blobs": blobs()}
        totals: list[list[float]] = []
        for item in items:
            x = item["image"][None].to(self.device)
            y = model(x)
            total, parts = self.loss(y, x)
            out, content = quantize(y.float().cpu()), x.float().cpu()
            totals.append([float(total), *(float(v) for v in parts.values()),
                           *(float(fn(out, content)[0]) for fn in artifacts.values())])
        mean = np.mean(np.array(totals), axis=0).tolist()
        return {"loss": mean[0], **dict(zip(self.loss.terms.keys(), mean[1:])),
                **dict(zip(artifacts, mean[-len(artifacts):]))}

    def preview(self, model: nn.Module, previews: Sequence[Item], val_items: Sequence[Item],
                step: int) -> torch.Tensor:
        """Contents and the style image above the stylised contents."""
        from ..data.images import image_grid

        items = val_items or previews
        outs = [model(it["image"][None].to(self.device)).float().cpu().clamp(0, 1)[0]
                for it in items]
        h = items[0]["image"].shape[-2]
        return stack_rows([
            image_grid([it["image"] for it in items] + [self.style_image],
                       ["content"] * len(items) + ["style"], height=h),
            image_grid(outs, [f"step {step}"] * len(outs), height=h)])


TASKS: dict[str, type[Task]] = {task.name: task for task in (SRTask, StyleTask)}


def make_task(recipe: Recipe, device: torch.device) -> Task:
    """The task object of ``recipe.task``."""
    try:
        cls = TASKS[recipe.task]
    except KeyError:
        raise RecipeError(f"task: unknown task {recipe.task!r}; one of "
                          f"{', '.join(sorted(TASKS))}") from None
    return cls(recipe, device)


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
