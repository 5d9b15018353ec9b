"""Export a transform to ONNX or TorchScript, and check the export against PyTorch.

The exported graph is the plain network (ONNX Runtime and TorchScript apply their own fusions)
inside :class:`~percepkit.inference.padded.PaddedNet`, and maps float images in [0, 1] shaped
(B, 3, H, W) of any size to (B, 3, scale H, scale W): it pads to the network's stride and crops
as ``percepkit stylize`` / ``upscale`` do, so its output is theirs (a fixed-size export, for a
multiple of the stride, takes that size only). Transforms that resample inside the network
with size-dependent matrices (the bicubic skip of ``johnson_sr skip=True``, ``srcnn``,
``bicubic``) can only be exported for one fixed input size (``size=``); :func:`export` finds
out by checking a second size, and says so.

Every export is verified: the exported model runs on random inputs (ONNX with onnxruntime, when
installed) and must match PyTorch within ``atol``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import PercepkitError
from ..inference import geometry
from ..inference.padded import PaddedNet
from ..runtime.files import atomic_path

Format = Literal["onnx", "torchscript"]


@dataclass
class ExportReport:
    """What was written and how well it matches PyTorch."""

    path: Path
    format: Format
    dynamic: bool
    input_sizes: list[tuple[int, int]] = field(default_factory=list)
    max_abs_diff: float = 0.0
    verified_with: str = ""


def _example_size(align: int, size: tuple[int, int] | None) -> tuple[int, int]:
    if size is not None:
        h, w = size
        if h % align or w % align:
            raise PercepkitError(f"--size {h}x{w}: height and width must be multiples of "
                                 f"{align} for this network")
        return h, w
    h = -(-max(64, 8 * align) // align) * align
    return h, h + 2 * align


def _check_size_h_w(size: tuple[int, int] | None) -> None:
    if size is not None and (size[0] < 1 or size[1] < 1):
        raise PercepkitError(f"--size must be positive, got {size[0]}x{size[1]}")


def _reference(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.inference_mode():
        return model(x).float().numpy()


def _onnx_runner(path: Path):
    try:
        import onnxruntime as ort
    except Exception:  # not installed (or broken): the file is written but not verified
        return None
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def _require_onnx() -> None:
    """One paragraph instead of torch's traceback when the onnx package is missing or broken."""
    from ..runtime.extras import import_optional

    import_optional("onnx", "ONNX export", missing=(
        "ONNX export needs the onnx package, which is not installed: pip install "
        "'percepkit[export]' (onnx, plus onnxruntime to verify the file); or use "
        "--format torchscript, which works with the base install."))


def _export_onnx(model: nn.Module, path: Path, x: torch.Tensor, dynamic: bool, opset: int,
                 metadata: dict[str, str]) -> None:
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(path), dynamo=False, input_names=["image"],
                          output_names=["output"], opset_version=opset,
                          dynamic_axes={"image": axes, "output": axes})
    import onnx

    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))


def _export_torchscript(model: nn.Module, path: Path, x: torch.Tensor,
                        metadata: dict[str, str]) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, x, check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={"percepkit.json": json.dumps(metadata)})


def _load_torchscript(path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return loaded(x).float().numpy()

    return run


def export(
    model: nn.Module,
    path: str | Path,
    format: Format = "onnx",
    *,
    size: tuple[int, int] | None = None,
    opset: int = 17,
    atol: float = 1e-4,
    metadata: dict[str, str] | None = None,
) -> ExportReport:
    """Export ``model`` to ``path`` and verify it (see module docs).

    ``size`` (height, width) fixes the input size; without it the export has dynamic height and
    width, verified at two sizes.
    """
    _check_size_h_w(size)
    net = model.net if isinstance(model, PaddedNet) else model
    net = net.eval().cpu().float()
    for p in net.parameters():
        p.requires_grad_(False)
    align, _ = geometry(net)
    # dynamic sizes: pads and crops inside the graph, so any input size works; a fixed size
    # (a multiple of the stride) needs no padding
    model = PaddedNet(net).eval() if size is None else net
    path = Path(path)
    dynamic = size is None
    h, w = _example_size(align, size)
    gen = torch.Generator().manual_seed(0)
    example = torch.rand(1, 3, h, w, generator=gen)
    meta = {"producer": "percepkit", "task": str(getattr(net, "task", "")),
            "scale": str(getattr(net, "scale", 1)), "stride": str(align),
            "input": "float32 RGB in [0, 1], (B, 3, H, W), any H and W (padded to the stride "
                     "inside, as percepkit stylize/upscale pad)", **(metadata or {})}
    if format == "onnx":
        _require_onnx()
    elif format != "torchscript":
        raise PercepkitError(f"unknown export format {format!r}; use onnx or torchscript")
    # written beside ``path`` and renamed into place once verified: a failed export or write
    # (disk full, no permission) leaves no file behind
    with atomic_path(path) as tmp:
        if format == "onnx":
            _export_onnx(model, tmp, example, dynamic, opset, meta)
            runner = _onnx_runner(tmp)
            verified_with = "onnxruntime" if runner else ""
        else:
            _export_torchscript(model, tmp, example, meta)
            runner = _load_torchscript(tmp)
            verified_with = "torch.jit.load"
        report = ExportReport(path, format, dynamic, verified_with=verified_with)
        if runner is not None:
            _verify(model, runner, example, dynamic, align, gen, format, atol, report)
    return report


def _verify(model: nn.Module, runner: Any, example: torch.Tensor, dynamic: bool, align: int,
            gen: torch.Generator, format: str, atol: float, report: ExportReport) -> None:
    """Run the exported file at the example size (and a second size when dynamic) and compare
    with PyTorch; raise when it fails or differs by more than ``atol``."""
    h, w = example.shape[-2:]
    checks = [example]
    if dynamic:
        # not multiples of the stride: checks the padding inside the graph too
        checks.append(torch.rand(2, 3, h + 3 * align + 1, w - align + 3, generator=gen))
    for i, x in enumerate(checks):
        try:
            got = runner(x)
        except Exception as e:
            got, err = None, e
        ref = _reference(model, x)
        if got is None or got.shape != ref.shape:
            why = f"({type(err).__name__})" if got is None else f"(shape {got.shape})"
            if i > 0:
                raise PercepkitError(
                    f"the {format} export does not work at other input sizes {why}: this "
                    f"transform resamples with size-dependent constants. Export it for one "
                    f"input size with --size HxW") from None
            raise PercepkitError(f"the {format} export failed to run {why}") from None
        diff = float(np.abs(got - ref).max())
        report.max_abs_diff = max(report.max_abs_diff, diff)
        report.input_sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        if diff > atol:
            hint = (" at a second input size: this transform resamples with size-dependent "
                    "constants; export it for one input size with --size HxW") if i else ""
            raise PercepkitError(f"the {format} export differs from PyTorch by {diff:.2e} "
                                 f"(> {atol:g}){hint}")
