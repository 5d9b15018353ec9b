"""How long percepkit takes to check recipes and to refuse bad ones (the tests check only that
they are accepted or refused; the time is measured here).

Usage::

    python benchmarks/recipe_checks.py [--repeats 3] [--json out.json]

Times, each the median of ``--repeats`` runs in this process (after one warm-up run):

1. ``load_recipe`` of every recipe in ``recipes/`` and ``recipes/zoo/`` (names, arguments,
   layers, ranges; no weights loaded, no networks built: ``percepkit recipe check``), in all;
2. the training-memory estimate of ``tiny_sr`` and ``tiny_style`` (``check_training_memory``,
   what ``percepkit train`` runs before allocating anything);
3. refusing absurd training recipes (``train.batch_size=4096 data.train.size=512``;
   ``transform.channels=60000``): from ``Trainer.run()`` to the ``RecipeError``, with how far
   the attempt raised the process's resident memory (peak, sampled every 10 ms);
4. refusing a YAML alias bomb ("billion laughs", 9 levels of 9 aliases) in ``recipe check``.

The machine, the torch version and the load average are printed with the numbers: on a shared
machine the times are upper bounds.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
ABSURD = (["train.batch_size=4096", "data.train.size=512"], ["transform.channels=60000"])


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after one warm-up call."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def check_all_recipes() -> int:
    from percepkit.recipes.recipe import load_recipe

    paths = sorted([*REPO.glob("recipes/*.yaml"), *REPO.glob("recipes/zoo/*.yaml")])
    for path in paths:
        load_recipe(path)
    return len(paths)


def memory_estimate(name: str) -> None:
    from percepkit.recipes.recipe import load_recipe
    from percepkit.registry import DATASETS
    from percepkit.train.memory_check import check_training_memory
    from percepkit.train.tasks import make_task

    cpu = torch.device("cpu")
    recipe = load_recipe(REPO / "recipes" / name)
    item = DATASETS.build(recipe.data.train, where="data.train")[(0, 0)]
    check_training_memory(recipe, item, make_task(recipe, cpu), cpu)


def refuse_absurd(overrides: list[str]) -> None:
    from percepkit.errors import RecipeError
    from percepkit.recipes.recipe import load_recipe
    from percepkit.train import Trainer

    recipe = load_recipe(REPO / "recipes" / "tiny_sr.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            Trainer(recipe, out=Path(tmp) / "run", progress=False).run()
        except RecipeError:
            return
    raise SystemExit(f"not refused: {overrides}")


def refuse_alias_bomb(path: Path) -> None:
    from percepkit.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.suppress(SystemExit):
        main(["recipe", "check", str(path)])


def alias_bomb(folder: Path) -> Path:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i, name in enumerate("bcdefghi"):
        lines.append(f"{name}: &{name} [{','.join(['*' + 'abcdefghi'[i]] * 9)}]")
    path = folder / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    os.environ.setdefault("PERCEPKIT_OFFLINE", "1")
    from percepkit.bench.speed_table import PeakMemory

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {load:.1f}")
    results: dict[str, float] = {}
    count = check_all_recipes()
    results[f"load_recipe x{count} (s)"] = median_seconds(check_all_recipes, args.repeats)
    for name in ("tiny_sr.yaml", "tiny_style.yaml"):
        results[f"memory estimate {name} (s)"] = median_seconds(
            lambda name=name: memory_estimate(name), args.repeats)
    for overrides in ABSURD:
        label = " ".join(overrides)
        results[f"refuse {label} (s)"] = median_seconds(
            lambda overrides=overrides: refuse_absurd(overrides), args.repeats)
        before = PeakMemory.current() or 0
        with PeakMemory() as mem:
            refuse_absurd(overrides)
        results[f"refuse {label}: RSS growth (MB)"] = (mem.bytes - before) / 2**20
    with tempfile.TemporaryDirectory() as tmp:
        bomb = alias_bomb(Path(tmp))
        results["refuse YAML alias bomb (s)"] = median_seconds(
            lambda: refuse_alias_bomb(bomb), args.repeats)
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main())
