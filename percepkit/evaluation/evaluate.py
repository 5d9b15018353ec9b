"""The evaluation engine behind ``percepkit eval``: run a transform over SR benchmarks and score it.

For every image: the LR input (see :mod:`percepkit.data.benchmark_sets`) goes through the
transform, the
output is clamped to [0, 1] and rounded to 8 bits (as a saved PNG would be), then each metric
compares it with the 8-bit HR ground truth. Means are per-image values averaged over the set.
The exact convention is returned with the results and written into every JSON file and into
the sidecar of every CSV file (:func:`conventions_path`); CSV files are plain tables.
"""

from __future__ import annotations

import csv
import dataclasses
import inspect
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.benchmark_sets import SRBenchmark, quantize
from ..data.images import image_grid, stack_rows, write_image
from ..data.imresize import imresize
from ..errors import MissingWeightsError, PercepkitError
from ..metrics import Metric, PlaneMetric
from ..metrics.base import check_pair
from ..registry import METRICS
from ..registry.arguments import built_class
from ..runtime.devices import threads
from ..runtime.files import atomic_write
from ..runtime.precision import Precision, resolve_precision

__all__ = [
    "DATA_CONVENTION", "LR_GIVEN", "LR_MADE", "EvalResult", "ImageRow", "MetricInfo",
    "SetResult", "build_metrics", "data_convention",
    "comparison_grid", "conventions_path", "csv_number", "evaluate", "json_number",
    "metric_entries", "result_to_dict", "run_transform", "score_image", "score_pair",
    "write_conventions", "write_csv", "write_json", "write_text",
]

#: how the LR inputs were made: from the HR (benchmarks, --hr-dir), or given (--lr-dir)
LR_MADE = ("LR = MATLAB imresize(HR, 1/scale) bicubic (a=-0.5, antialiased, symmetric padding) "
           "rounded to 8 bits")
LR_GIVEN = "LR = the given LR image files (--lr-dir, paired with the HR by name), 8-bit as read"
DATA_CONVENTION = (
    f"HR mod-cropped (top-left) to a multiple of the scale (or of mod_crop); {LR_MADE}; "
    "model outputs clamped to [0, 1] and rounded to 8 bits before measuring; 1-channel images "
    "are fed to the model as 3 equal channels and its output reduced back to 1 channel with luma "
    "0.299/0.587/0.114 (exact for equal channels); per-image values averaged over each set"
)


@dataclass
class MetricInfo:
    """A requested metric: its convention, or why it is not available (then shown as n/a)."""

    name: str
    higher_is_better: bool | None = True
    convention: str = ""
    fmt: str = ".4f"
    unavailable: str | None = None
    #: the precision the metric's network ran in (``None``: no network; float64/float32)
    precision: str | None = None


@dataclass
class ImageRow:
    """Scores of one image (``None`` for an unavailable metric)."""

    name: str
    values: dict[str, float | None]
    notes: list[str] = field(default_factory=list)


@dataclass
class SetResult:
    """Per-image rows and means for one dataset."""

    name: str
    scale: int
    source: str = ""
    checksum_note: str = ""
    mod_crop: int = 0
    #: whether the LR inputs were given as files (--lr-dir) rather than made from the HR
    given_lr: bool = False
    rows: list[ImageRow] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def mean(self, metric: str) -> float | None:
        """Mean over images, ``None`` when the metric is unavailable or no image was scored."""
        vals = [r.values.get(metric) for r in self.rows]
        vals = [v for v in vals if v is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(self.rows) else None


@dataclass
class EvalResult:
    """Everything ``percepkit eval`` reports."""

    model: str
    scale: int
    device: str
    metrics: list[MetricInfo]
    sets: list[SetResult]
    seconds: float = 0.0
    #: where the model came from: file, SHA-256, format, architecture (for the results file)
    model_info: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: the task (``percepkit eval --task``) and its benchmark protocol (``""``: not recorded)
    task: str = ""
    protocol: str = ""
    #: the protocol's own statement of how inputs are made (``""``: :func:`data_convention`)
    data_note: str = ""

    @property
    def convention(self) -> dict[str, Any]:
        """The exact data and metric conventions, as written into results files (with the
        task's protocol name when there is one)."""
        return {**({"task": self.task, "protocol": self.protocol} if self.protocol else {}),
                "data": self.data_note or data_convention(self.sets),
                "metrics": {m.name: m.convention or f"n/a: {m.unavailable}" for m in self.metrics}}


def data_convention(sets: Sequence[SetResult]) -> str:
    """:data:`DATA_CONVENTION`, with the LR statement of the sets: made from the HR, given as
    files (--lr-dir), or each set's when both occur."""
    given = [s.name for s in sets if s.given_lr]
    if not given:
        return DATA_CONVENTION
    made = [s.name for s in sets if not s.given_lr]
    lr = LR_GIVEN if not made else (f"{', '.join(given)}: {LR_GIVEN}; {', '.join(made)}: "
                                    f"{LR_MADE}")
    return DATA_CONVENTION.replace(LR_MADE, lr)


def build_metrics(names: Sequence[str], crop_border: int = 0,
                  extra: dict[str, dict[str, Any]] | None = None,
                  device: str | torch.device = "cpu", crop_whole_image: bool = False,
                  precision: str | Precision = "fp32"
                  ) -> tuple[dict[str, Metric], list[MetricInfo]]:
    """Build registered metrics by name, passing ``crop_border`` to those that take it.

    ``precision`` (see :mod:`percepkit.runtime.precision`) applies to the metrics that run a network
    (``runs_network``: LPIPS, DISTS); their convention then says so. PSNR/SSIM stay float64.

    Metrics that declare ``whole_image = True`` (LPIPS: published SR tables score it on the
    whole image) get ``crop_border`` only with ``crop_whole_image``. A metric whose weights are
    missing is not built; its :class:`MetricInfo` says why.
    """
    built: dict[str, Metric] = {}
    infos: list[MetricInfo] = []
    reduced = resolve_precision(precision, torch.device(device))
    for name in names:
        kwargs = dict((extra or {}).get(name, {}))
        obj = METRICS.get(name)
        target = obj.__init__ if inspect.isclass(obj) else obj
        whole = bool(_declared(obj, "whole_image")) and not crop_whole_image
        if "crop_border" in inspect.signature(target).parameters and not whole:
            kwargs.setdefault("crop_border", crop_border)
        try:
            metric = METRICS.build({"name": name, **kwargs}, where=f"metric {name!r}")
        except MissingWeightsError as e:
            infos.append(MetricInfo(name, _declared(obj, "higher_is_better"), unavailable=str(e)))
            continue
        if isinstance(metric, nn.Module):
            metric = metric.to(device).eval()
        convention, used = str(getattr(metric, "convention", name)), None
        if getattr(metric, "runs_network", False):
            used = reduced.describe()
            if reduced.reduced:
                metric.precision = reduced
                convention += f"; network in {used} (published values: fp32)"
        built[name] = metric
        infos.append(MetricInfo(name, bool(getattr(metric, "higher_is_better", True)),
                                convention, str(getattr(metric, "fmt", ".4f")), precision=used))
    return built, infos


def to_luma(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB to (..., 1, H, W) luma 0.299 R + 0.587 G + 0.114 B (exact for equal
    channels): how a 3-channel output is scored against a 1-channel image."""
    return (x * torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(3, 1, 1)).sum(
        -3, keepdim=True)


def _declared(obj: Any, attr: str) -> Any:
    """A class attribute of a metric class, or of the class a factory is annotated to return."""
    return getattr(built_class(obj), attr, None)


def run_transform(transform: Callable[[torch.Tensor], torch.Tensor], lr: torch.Tensor,
                  device: torch.device) -> torch.Tensor:
    """Transform one CxHxW LR image; returns the 8-bit-rounded output on the CPU (float32)."""
    channels = lr.shape[0]
    x = lr.to(device)[None]
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    y = transform(x)
    if not torch.is_tensor(y) or y.dim() != 4:
        raise PercepkitError(f"the model returned {type(y).__name__} {getattr(y, 'shape', '')}, "
                             f"expected a (1, C, H, W) tensor")
    y = y.detach().cpu()
    with threads(1):
        y = y.float()
        if channels == 1 and y.shape[1] == 3:
            y = to_luma(y)
        return quantize(y[0])


def score_image(metric: Metric, output: torch.Tensor, target: torch.Tensor) -> float:
    """One metric value for one CxHxW pair (parameter-free metrics run single-threaded)."""
    param = next(iter(metric.parameters()), None) if isinstance(metric, nn.Module) else None
    dev = param.device if param is not None else torch.device("cpu")
    with threads(1 if param is None else None):  # parameter-free metrics: small CPU ops
        value = metric(output[None].to(dev), target[None].to(dev))
    return float(value.reshape(-1)[0])


def score_pair(metrics: dict[str, Metric], infos: Sequence[MetricInfo], output: torch.Tensor,
               target: torch.Tensor) -> dict[str, float | None]:
    """Every metric of ``infos`` for one CxHxW pair (``None`` where ``metrics`` lacks it).

    Metrics of the same planes (PSNR, SSIM, MS-SSIM on Y with one crop) share one conversion.
    """
    planes: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = {}
    values: dict[str, float | None] = {}
    for info in infos:
        metric = metrics.get(info.name)
        if metric is None:
            values[info.name] = None
        elif isinstance(metric, PlaneMetric):
            with threads(1):
                key = metric.planes_key
                if key not in planes:  # the check Metric.__call__ makes, once per conversion
                    check_pair(output[None], target[None], metric.name)
                    planes[key] = metric.planes(output[None], target[None])
                values[info.name] = float(metric.score_planes(*planes[key])[0])
        else:
            values[info.name] = score_image(metric, output, target)
    return values


def detail_box(hr: torch.Tensor, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` window with the most HR detail (gradient energy)."""
    g = hr.mean(0, keepdim=True)
    energy = (g[:, 1:, :-1] - g[:, :-1, :-1]).abs() + (g[:, :-1, 1:] - g[:, :-1, :-1]).abs()
    if energy.shape[-1] < size or energy.shape[-2] < size:
        return 0, 0
    pooled = torch.nn.functional.avg_pool2d(energy[None], size, stride=max(1, size // 4))[0, 0]
    idx = int(pooled.argmax())
    stride = max(1, size // 4)
    return (idx // pooled.shape[1]) * stride, (idx % pooled.shape[1]) * stride


def comparison_grid(tiles: Sequence[torch.Tensor], labels: Sequence[str]) -> torch.Tensor:
    """Side-by-side images with a second row of zoomed crops (the HR's most detailed region)."""
    hr = tiles[-1]
    h, w = hr.shape[-2:]
    size = max(8, min(h, w) // 4)
    top, left = detail_box(hr, size)
    marked, crops = [], []
    for t in tiles:
        t = t.expand(3, -1, -1) if t.shape[0] == 1 else t
        crops.append(t[:, top:top + size, left:left + size])
        m = t.clone()
        box = torch.tensor([1.0, 0.0, 0.0]).view(3, 1)
        b, r = min(top + size, h) - 1, min(left + size, w) - 1
        m[:, top, left:r + 1] = box
        m[:, b, left:r + 1] = box
        m[:, top:b + 1, left] = box
        m[:, top:b + 1, r] = box
        marked.append(m)
    return stack_rows([image_grid(marked, labels=list(labels)), image_grid(crops, height=int(h))])


def _safe_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "image"


def _file_stem(name: str) -> str:
    """An image's own file stem, kept as it is (``percepkit score`` pairs files by stem)."""
    return name if name not in ("", ".", "..") and "/" not in name else _safe_name(name)


def evaluate(
    transform: Callable[[torch.Tensor], torch.Tensor],
    datasets: Sequence[SRBenchmark],
    metrics: dict[str, Metric],
    infos: Sequence[MetricInfo] | None = None,
    *,
    model_name: str = "model",
    device: str | torch.device = "cpu",
    save_images: str | Path | None = None,
    on_image: Callable[[str, str], None] | None = None,
    make_input: Callable[[Any, str], torch.Tensor] | None = None,
) -> EvalResult:
    """Score ``transform`` on ``datasets``; unreadable/unusable images are skipped with a reason.

    ``make_input(sample, set_name)`` makes the model's input of one benchmark image (a task's
    :meth:`~percepkit.train.tasks.Task.eval_input`); default, and for sets with given input
    files (``--lr-dir``), ``sample.lr``.
    ``on_image(set_name, image_name)`` is called after each image (for progress bars).
    ``save_images``: a folder; each set gets ``<set>/<image>.png`` comparison grids and
    ``<set>/sr/<image>.png``, the 8-bit output exactly as it was scored (``percepkit score``
    reproduces the numbers from these files).
    """
    device = torch.device(device)
    if isinstance(transform, nn.Module):
        transform = transform.to(device).eval()
    infos = list(infos) if infos is not None else [
        MetricInfo(n, bool(getattr(m, "higher_is_better", True)),
                   str(getattr(m, "convention", n)), str(getattr(m, "fmt", ".4f")))
        for n, m in metrics.items()]
    scale = datasets[0].scale if datasets else 0
    start = time.perf_counter()
    results = []
    with torch.inference_mode():
        for ds in datasets:
            set_start = time.perf_counter()
            res = SetResult(ds.name, ds.scale, ds.source, ds.checksum_note,
                            mod_crop=getattr(ds, "mod", None) or ds.scale,
                            given_lr=getattr(ds, "lr_paths", None) is not None)
            for i in range(len(ds)):
                path = ds.hr_paths[i]
                try:
                    with threads(1):  # reading, mod-crop, LR, input: small ops (see threads)
                        sample = ds.sample(i)
                        given = sample.lr if make_input is None or res.given_lr else \
                            make_input(sample, ds.name)  # given input files stay as given
                    sr = run_transform(transform, given, device)
                    if sr.shape != sample.hr.shape:
                        raise PercepkitError(
                            f"{path}: {model_name} returned {tuple(sr.shape)} for an LR of "
                            f"{tuple(given.shape)}, but the HR is {tuple(sample.hr.shape)}; "
                            f"is the scale (x{ds.scale}) the model's?")
                    values = score_pair(metrics, infos, sr, sample.hr)
                except PercepkitError as e:
                    msg = str(e)
                    reason = msg.split(": ", 1)[1] if msg.startswith(str(path)) else msg
                    res.skipped.append((path.name, reason))
                else:
                    res.rows.append(ImageRow(sample.name, values, sample.notes))
                    if save_images is not None:
                        folder = Path(save_images) / _safe_name(ds.name)
                        _save_grid(folder, dataclasses.replace(sample, lr=given), sr,
                                   model_name, ds.scale)
                        write_image(folder / "sr" / f"{_file_stem(sample.name)}.png", sr)
                if on_image is not None:
                    on_image(ds.name, path.name)
            res.seconds = time.perf_counter() - set_start
            results.append(res)
    return EvalResult(model_name, scale, str(device), list(infos), results,
                      time.perf_counter() - start)


def _save_grid(folder: Path, sample: Any, sr: torch.Tensor, model_name: str, scale: int) -> None:
    if scale == 1:  # a same-size task: the degraded input as it is (8-bit for display)
        first, label = quantize(sample.lr.clamp(0, 1).float()), "input"
    else:
        first, label = quantize(imresize(sample.lr.double(), scale=scale).float()), "bicubic"
        if first.shape != sample.hr.shape:  # paired LR files of another size convention
            first = quantize(imresize(sample.lr.double(),
                                      size=tuple(sample.hr.shape[-2:])).float())
    if model_name in ("bicubic", "identity"):
        tiles, labels = [first, sample.hr], [label, "HR"]
    else:
        tiles, labels = [first, sr, sample.hr], [label, model_name, "HR"]
    write_image(folder / f"{_safe_name(sample.name)}.png", comparison_grid(tiles, labels))


# -- results files --------------------------------------------------------------------------------
def json_number(value: float | None) -> float | str | None:
    """A value for JSON: ``None`` when unavailable, ``"inf"``/``"-inf"`` for infinities."""
    if value is None:
        return None
    return value if math.isfinite(value) else ("inf" if value > 0 else "-inf")


def metric_entries(infos: Sequence[MetricInfo]) -> list[dict[str, Any]]:
    """The ``metrics`` list of a results file (eval and score): name, direction, availability
    and the precision of metric networks."""
    return [{"name": m.name, "higher_is_better": m.higher_is_better,
             "available": m.unavailable is None,
             **({"precision": m.precision} if m.precision else {}),
             **({"unavailable": m.unavailable} if m.unavailable else {})} for m in infos]


def result_to_dict(result: EvalResult) -> dict[str, Any]:
    """A JSON-ready dict: conventions, means, per-image values, skipped files, timings."""
    from .. import __version__

    return {
        "percepkit": __version__,
        "model": result.model,
        **({"model_info": result.model_info} if result.model_info else {}),
        **({"task": result.task, "protocol": result.protocol} if result.protocol else {}),
        "scale": result.scale,
        "device": result.device,
        "convention": result.convention,
        "metrics": metric_entries(result.metrics),
        "sets": [{
            "name": s.name, "scale": s.scale, "mod_crop": s.mod_crop, "source": s.source,
            "checksums": s.checksum_note,
            "images": len(s.rows),
            "mean": {m.name: json_number(s.mean(m.name)) for m in result.metrics},
            "per_image": [{"name": r.name, **{k: json_number(v) for k, v in r.values.items()},
                           **({"notes": r.notes} if r.notes else {})} for r in s.rows],
            "skipped": [{"file": f, "reason": why} for f, why in s.skipped],
            "seconds": round(s.seconds, 4),
        } for s in result.sets],
        "seconds": round(result.seconds, 4),
    }


def write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (complete or absent), or to stdout for ``-``."""
    if str(path) == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def conventions_path(csv_path: str | Path) -> Path:
    """The sidecar of a CSV results file: ``results.csv`` -> ``results.conventions.json``."""
    return Path(csv_path).with_suffix(".conventions.json")


def write_json(result: EvalResult, path: str | Path) -> None:
    """Write the results as JSON (``-`` for stdout), convention included."""
    write_text(path, json.dumps(result_to_dict(result), indent=2) + "\n")


def write_csv(result: EvalResult, path: str | Path) -> Path | None:
    """Write per-image rows and per-set means as a plain CSV table (header first).

    The convention goes to the sidecar :func:`conventions_path` (not for ``-``, stdout);
    returns the sidecar's path.
    """
    names = [m.name for m in result.metrics]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["set", "image", *names])
    for s in result.sets:
        for r in s.rows:
            writer.writerow([s.name, r.name, *[csv_number(r.values.get(n)) for n in names]])
        writer.writerow([s.name, "MEAN", *[csv_number(s.mean(n)) for n in names]])
    write_text(path, out.getvalue())
    if str(path) == "-":
        return None
    sidecar = result_to_dict(result)
    for s in sidecar["sets"]:
        s.pop("per_image")
    columns = {"set": "dataset", "image": "image name (file stem); MEAN: the set's mean",
               **{n: "per-image value ('n/a': unavailable, 'inf': identical images)"
                  for n in names}}
    return write_conventions(path, {"columns": columns, **sidecar})


def write_conventions(csv_path: str | Path, info: dict[str, Any]) -> Path:
    """Write the sidecar of a CSV file: what its columns are and how they were computed."""
    side = conventions_path(csv_path)
    write_text(side, json.dumps({"csv": Path(csv_path).name, **info}, indent=2) + "\n")
    return side


def csv_number(value: float | None) -> str:
    """A value as CSV text: full precision, ``n/a`` when unavailable, ``inf``/``-inf``."""
    if value is None:
        return "n/a"
    return repr(float(value)) if math.isfinite(value) else ("inf" if value > 0 else "-inf")
