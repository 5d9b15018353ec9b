"""The training data of a run: the loader over the training set, preview and validation items."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import RecipeError
from ..models.checkpoint import Checkpoint
from ..recipes.recipe import Recipe
from ..registry import DATASETS
from .signals import ignore_stop_signals
from .tasks import Task

PREVIEW_SEED = 7919  # augmentation key of the fixed preview crops


def preview_items(dataset: Any, n: int) -> list[dict[str, Any]]:
    """``n`` fixed training items (same crops every time) for preview grids."""
    return [dataset[(i % len(dataset), PREVIEW_SEED + i)] for i in range(min(n, len(dataset)))]


def validation_items(recipe: Recipe, task: Task, preview: list[dict[str, Any]]
                     ) -> list[dict[str, Any]]:
    """The validation items: ``data.val`` (up to ``train.val_images``), else the task's default."""
    data, limit = recipe.data, recipe.train.val_images
    items: list[dict[str, Any]] = []
    if data.val:
        val = DATASETS.build(data.val, where="data.val")
        for i in range(len(val) if limit is None else min(len(val), limit)):
            item = val[i]
            if hasattr(item, "hr"):  # an SR benchmark Sample
                item = {"lr": item.lr, "hr": item.hr, "name": item.name}
            items.append(item)
    elif task.validates_on_previews:
        items = [dict(p) for p in preview]
    if items and task.input_key not in items[0]:
        raise RecipeError(f"data.val: the {task.name} task needs validation items with "
                          f"{task.input_key!r}, but {data.val.get('name')} yields "
                          f"{sorted(items[0])}")
    return items


def training_loader(dataset: Any, recipe: Recipe, rank: int, world_size: int, start: int,
                    pin_memory: bool) -> tuple[Any, Any]:
    """``(sampler, DataLoader)`` continuing at this process's ``start``-th training key."""
    from torch.utils.data import DataLoader

    from ..data.datasets import TrainSampler

    s = recipe.train
    sampler = TrainSampler(len(dataset), seed=s.seed, rank=rank, world_size=world_size,
                           start=start)
    workers = max(0, int(s.workers))
    loader = DataLoader(
        dataset, batch_size=s.batch_size, sampler=sampler, num_workers=workers,
        pin_memory=pin_memory, drop_last=False,
        generator=torch.Generator().manual_seed(s.seed),  # never touch the global RNG
        prefetch_factor=4 if workers else None, persistent_workers=False,
        worker_init_fn=ignore_stop_signals if workers else None)  # the main process handles them
    return sampler, loader


def resume_position(ckpt: Checkpoint, world_size: int, batch_size: int) -> tuple[int, bool]:
    """``(training keys this process has consumed, exact)`` when resuming from ``ckpt``.

    With the checkpoint's process count and batch size the data continues bit-exactly;
    otherwise at the same point in the data (``exact`` false).
    """
    if ckpt.world_size == world_size and ckpt.batch_size == batch_size:
        n = ckpt.samples_per_rank
        return ((ckpt.step or 0) * batch_size if n is None else n), True
    consumed = (ckpt.samples_per_rank or 0) * int(ckpt.world_size or 1)
    return consumed // world_size, False
