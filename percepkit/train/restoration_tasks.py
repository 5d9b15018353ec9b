"""The same-size restoration tasks: ``denoise``, ``deblur`` and ``jpeg`` (issue 18).

Each is a :class:`~percepkit.train.tasks.Task` registered in ``TASKS``. A sample is
``{"lr", "hr"}``: the degraded input and the clean target, of the same size (``scale`` 1), made
on the fly by ``sr_patches``/``synthetic`` with a ``degradations`` list, or read from a
``paired_folder`` (``scale: 1``). Validation and ``percepkit eval --task`` use the task's
benchmark protocol (:mod:`percepkit.evaluation.protocols`): a benchmark image's input is made
from its clean image, seeded by its name; a paired folder's input is the given file.
Networks: transforms of task ``restore`` (``dncnn``, ``identity``), or SR networks built at
scale 1.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from ..errors import PercepkitError, RecipeError
from ..evaluation.protocols import Protocol, make_protocol
from ..registry import TASKS
from .tasks import Item, Task, stack_rows

__all__ = ["DeblurTask", "DenoiseTask", "JpegTask", "RestorationTask"]


class RestorationTask(Task):
    """A degraded input, the clean image as target, both the same size; scored by the task's
    protocol (``level``: its arguments, e.g. ``{"sigma": 25}``)."""

    input_key, target_key = "lr", "hr"
    network_tasks = ("restore", "sr")
    uses_scale = True
    default_val_metrics = ("psnr", "ssim")
    default_best = "psnr"
    eval_baseline = "identity"
    eval_metrics = ("psnr", "ssim", "lpips")
    #: the protocol's arguments (make_protocol(name, **level)); {} = its defaults
    level: ClassVar[Mapping[str, Any]] = {}

    # -- the protocol -------------------------------------------------------------------------
    @classmethod
    def eval_protocol(cls, level: Mapping[str, Any] | None = None) -> Protocol:
        """The task's protocol at ``level`` (default: the class's ``level``)."""
        return make_protocol(cls.name, **dict(cls.level if level is None else level))

    @classmethod
    def with_level(cls, **level: Any) -> type[Task]:
        """A subclass scoring the protocol at ``level`` (None values: the default)."""
        given = {k: v for k, v in level.items() if v is not None}
        if not given:
            return cls
        allowed = cls.level_keys()
        wrong = [k for k in given if k not in allowed]
        if wrong:
            raise PercepkitError(f"--{wrong[0]} does not apply to the {cls.name} task (its "
                                 f"protocol takes {', '.join('--' + k for k in allowed)})")
        protocol = cls.eval_protocol({**cls.level, **given})
        return type(cls.__name__, (cls,), {"level": dict(protocol.level),
                                           "protocol": protocol.label,
                                           "__doc__": cls.__doc__})

    @classmethod
    def level_keys(cls) -> tuple[str, ...]:
        """The protocol's level arguments (``sigma``, ``quality``...)."""
        import inspect

        from ..evaluation.protocols import PROTOCOLS

        return tuple(inspect.signature(PROTOCOLS[cls.name]).parameters)

    @classmethod
    def eval_input(cls, sample: Any, set_name: str) -> torch.Tensor:
        """The protocol's degraded input of the benchmark image (seeded by its name)."""
        return cls.eval_protocol().degrade(sample.hr, sample.name)

    @classmethod
    def eval_data_convention(cls, scale: int) -> str | None:
        p = cls.eval_protocol()
        d = p.to_dict()
        return (f"{p.label}: {p.statement}; seed: {d['seed']}; targets: the 8-bit images as "
                f"stored (no mod-crop); model outputs clamped to [0, 1] and rounded to 8 bits "
                f"before measuring; 1-channel images are fed to the model as 3 equal channels "
                f"and its output reduced back with luma 0.299/0.587/0.114; per-image values "
                f"averaged over each set")

    @classmethod
    def eval_scale(cls, scale: int | None) -> int:
        if scale not in (None, 1):
            raise PercepkitError(f"--scale {scale}: the {cls.name} task restores at the input's "
                                 f"size (scale 1); drop --scale")
        return 1

    @classmethod
    def network_problem(cls, net: Any) -> str | None:
        task = getattr(net, "task", None)
        if task == "sr" and isinstance(net, nn.Module) and getattr(net, "scale", 1) != 1:
            return (f"an x{net.scale} super-resolution network; the {cls.name} task needs a "
                    f"same-size one (dncnn, or an SR network built with scale: 1)")
        return super().network_problem(net)

    @classmethod
    def recipe_problems(cls, raw: Mapping[str, Any]) -> list[str]:
        """The base checks, ``val.protocol`` (the protocol's arguments), and that a dataset
        making inputs on the fly has a ``degradations`` list (else sr_patches would only blur)."""
        problems = super().recipe_problems(raw)
        val = raw.get("val")
        level = val.get("protocol") if isinstance(val, Mapping) else None
        if level is not None:
            if not isinstance(level, Mapping):
                problems.append(f"val.protocol: expected a mapping such as "
                                f"{{{cls.level_keys()[0]}: ...}}, got {level!r}")
            else:
                wrong = [k for k in level if k not in cls.level_keys()]
                if wrong:
                    problems.append(f"val.protocol: unknown key {wrong[0]!r}; the {cls.name} "
                                    f"protocol takes {', '.join(cls.level_keys())}")
                else:
                    try:
                        cls.eval_protocol(level)
                    except PercepkitError as e:
                        problems.append(f"val.protocol: {e}")
        data = raw.get("data")
        train = data.get("train") if isinstance(data, Mapping) else None
        if isinstance(train, Mapping) and train.get("name") in ("sr_patches", "synthetic") \
                and not train.get("degradations"):
            problems.append(f"data.train.degradations: a {cls.name} recipe making its inputs "
                            f"from clean images needs the degradation steps, e.g. "
                            f"{cls.example_steps()} (or use paired_folder)")
        return problems

    @classmethod
    def example_steps(cls) -> str:
        """The training degradation matching the default protocol, as recipe text."""
        def text(v: Any) -> str:
            return str(v).lower() if isinstance(v, bool) else f"{v:g}" \
                if isinstance(v, float) else str(v)

        steps = ("{" + ", ".join(f"{k}: {text(v)}" for k, v in step.items()) + "}"
                 for step in cls.eval_protocol().steps)
        return "[" + ", ".join(steps) + "]"

    # -- one training run ---------------------------------------------------------------------
    def check_train_item(self, item: Item, dataset: str, module: nn.Module) -> None:
        if not {"lr", "hr"} <= set(item):
            raise RecipeError(f"data.train: the {self.name} task needs a dataset yielding 'lr' "
                              f"and 'hr' (sr_patches with degradations, paired_folder), but "
                              f"{dataset} yields {sorted(item)}")
        if item["lr"].shape[-2:] != item["hr"].shape[-2:]:
            raise RecipeError(f"data.train: {dataset} gives inputs of "
                              f"{tuple(item['lr'].shape[-2:])} for targets of "
                              f"{tuple(item['hr'].shape[-2:])}; the {self.name} task needs the "
                              f"same size (scale: 1)")

    def setup(self, module: nn.Module, loss: nn.Module) -> None:
        self.protocol = self.eval_protocol(self.recipe.val.protocol or self.level)
        self.build_val_metrics()

    def metric_arguments(self) -> tuple[int, dict[str, dict[str, Any]]]:
        """PSNR/SSIM on the protocol's planes (RGB or Y), no border crop, as eval."""
        return 0, self.protocol.metric_specs(("psnr", "ssim", "ms_ssim"))

    def val_input(self, item: Item) -> torch.Tensor:
        """A benchmark image's input by the protocol (items with a ``name``); a paired
        folder's given input otherwise."""
        if "name" in item:
            return self.protocol.degrade(item["hr"], str(item["name"]))
        return item["lr"]

    def val_pair(self, model: nn.Module, item: Item) -> tuple[torch.Tensor, torch.Tensor]:
        from ..evaluation.evaluate import run_transform

        return run_transform(model, self.val_input(item), self.device), item["hr"]

    def baseline(self, items: Sequence[Item]) -> str | None:
        from ..nets.transforms import Identity

        base = self.validate(Identity(), items)
        shown = "  ".join(f"{k} {v:.4f}" for k, v in base.items())
        return (f"validation baseline (the degraded input, {self.protocol.label}) on "
                f"{len(items)} image(s): {shown}")

    def preview(self, model: nn.Module, previews: Sequence[Item], val_items: Sequence[Item],
                step: int) -> torch.Tensor:
        """One row per preview image: the degraded input, the network's output, the target."""
        from ..data.images import image_grid

        rows = []
        for i, item in enumerate(previews):
            x = item["lr"][None]
            out = model(x.to(self.device)).float().cpu().clamp(0, 1)[0]
            labels = ["input", f"step {step}", "target"] if i == 0 else None
            rows.append(image_grid([item["lr"].clamp(0, 1), out, item["hr"]], labels))
        return stack_rows(rows)


@TASKS.register("denoise")
class DenoiseTask(RestorationTask):
    """Gaussian denoising: input = target + white Gaussian noise; PSNR/SSIM on RGB.

    Protocol (``percepkit eval --task denoise --sigma 15|25|50``, ``val.protocol: {sigma: 25}``):
    noise of sigma on the 0-255 scale per pixel and channel, float, neither clipped nor
    rounded (DnCNN/FFDNet), seeded by the image's name; PSNR/SSIM on RGB, no border crop;
    LPIPS on the whole image. Train with ``degradations: [{name: gaussian_noise, sigma: 25,
    clip: false}]`` and ``quantize: false`` to match it.
    """

    name, title = "denoise", "denoising"
    protocol = "denoise sigma 25"
    protocol_summary = ("input = target + N(0, sigma/255) per pixel and channel, float, "
                        "unclipped, seeded by the image name (sigma 15/25/50); PSNR/SSIM on RGB, "
                        "no border crop; LPIPS on the whole image")
    eval_channel = "rgb"
    level = {"sigma": 25}


@TASKS.register("deblur")
class DeblurTask(RestorationTask):
    """Non-blind Gaussian deblurring: input = target blurred (Gaussian, sigma 1.6 px, 25x25,
    reflect padding) + Gaussian noise sigma 2.55, float, unclipped; PSNR/SSIM on RGB, no crop.

    ``val.protocol`` / ``percepkit eval --task deblur --sigma S`` set the blur's sigma
    (``kernel_size`` and ``noise`` in ``val.protocol``); ``--kernel levin09:N`` (``val.protocol:
    {kernel: levin09:N}``) blurs with the N-th motion kernel of Levin et al. 2009 instead.
    """

    name, title = "deblur", "deblurring"
    protocol = "deblur sigma 1.6 kernel_size 25 noise 2.55"
    protocol_summary = ("input = target * Gaussian kernel (sigma 1.6 px, 25x25, reflect) + "
                        "N(0, 2.55/255), float, unclipped, seeded by the image name; PSNR/SSIM "
                        "on RGB, no border crop; LPIPS on the whole image")
    eval_channel = "rgb"


@TASKS.register("jpeg")
class JpegTask(RestorationTask):
    """JPEG artefact removal: input = the target saved as a JPEG (Pillow) and decoded, 8-bit;
    PSNR/SSIM on Y (BT.601), no border crop, as ARCNN/DnCNN report.

    ``percepkit eval --task jpeg --quality 10|20|30|40``, ``val.protocol: {quality: 20}``.
    """

    name, title = "jpeg", "JPEG artefact removal"
    protocol = "jpeg quality 20"
    protocol_summary = ("input = Pillow JPEG encode/decode of the target at the quality "
                        "(10/20/30/40), 8-bit; PSNR/SSIM on Y, no border crop; LPIPS on the "
                        "whole image")
    eval_channel = "y"
    level = {"quality": 20}
