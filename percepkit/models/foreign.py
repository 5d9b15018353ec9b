"""Networks trained by other projects, loaded as percepkit transforms.

* pytorch/examples ``fast_neural_style`` models (``candy.pth``, ``mosaic.pth``, …: a
  ``TransformerNet`` state dict), mapped exactly onto
  :class:`~percepkit.nets.transforms.JohnsonStyle` so that they run through percepkit's fast
  inference path and tiler;
* super-resolution checkpoints of BasicSR, KAIR, chaiNNer, Real-ESRGAN … (ESRGAN/RRDB, Compact,
  SPAN, SwinIR, HAT, … ~40 architectures) through ``spandrel`` (the optional extra
  ``pip install 'percepkit[models]'``), wrapped as
  :class:`~percepkit.nets.spandrel_arch.SpandrelSR`; :func:`convert` turns either into a percepkit
  checkpoint's spec and weights (``spandrel:ID`` transforms keep the architecture's own keys).

``.pth`` files are read with ``torch.load(weights_only=True)``, PyTorch's restricted unpickler
that builds tensors and plain containers only and refuses any other object without running it.
percepkit's own format stays safetensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch

from ..errors import CheckpointError, PercepkitError
from ..nets.spandrel_arch import SpandrelSR, import_spandrel, spec_of, sr_problem
from ..registry import TRANSFORMS

#: percepkit's equivalent of pytorch/examples' TransformerNet (32/64/128 channels, instance
#: norm, nearest-upsample convolutions, a linear output in [0, 255] units rescaled to [0, 1]).
EXAMPLES_SPEC = {"name": "johnson_style", "norm": "instance", "upsample": "resize_conv",
                 "output": "linear"}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a third-party ``.pth``/``.pt``/``.safetensors`` file (no code is run)."""
    import pickle
    import warnings

    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. "pickle protocol 4": not the user's fault
                state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{path}: holds pickled objects other than tensors; percepkit "
                              f"reads only tensors from .pth files and never runs pickled "
                              f"code") from None
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{path}: not a readable weights file ({first[:200]}); it may be "
                              f"truncated or not a PyTorch/safetensors file") from None
    for key in ("state_dict", "params_ema", "params", "model"):
        if isinstance(state, Mapping) and isinstance(state.get(key), Mapping):
            state = state[key]
            break
    if not isinstance(state, Mapping) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f"{path}: does not hold a state dict of tensors")
    return dict(state)


def is_examples_transformer_net(state: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state`` has pytorch/examples ``TransformerNet``'s key layout."""
    return {"conv1.conv2d.weight", "in1.weight", "res1.conv1.conv2d.weight",
            "deconv1.conv2d.weight", "deconv3.conv2d.weight"} <= set(state)


def examples_to_johnson_style(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a ``TransformerNet`` state dict onto ``johnson_style`` (:data:`EXAMPLES_SPEC`) keys.

    Exact, not approximate: the conv biases before instance norm cancel in the mean
    subtraction and are dropped; the first convolution is multiplied by 255 (the input is
    [0, 1] here, [0, 255] there; instance norm makes the rest of the net scale-free) and the last
    divided by 255 (output [0, 1] instead of [0, 255]).
    """
    state = {k: v for k, v in state.items() if not re.search(r"running_(mean|var)$", k)}
    convs = ["conv1", "conv2", "conv3"]
    norms = ["in1", "in2", "in3"]
    ours = ["net.0", "net.1", "net.2"]
    for r in range(5):
        for j in (1, 2):
            convs.append(f"res{r + 1}.conv{j}")
            norms.append(f"res{r + 1}.in{j}")
            ours.append(f"net.{3 + r}.body.{j - 1}")
    out: dict[str, torch.Tensor] = {}
    for conv, norm, prefix in zip(convs, norms, ours):
        scale = 255.0 if conv == "conv1" else 1.0
        out[f"{prefix}.1.weight"] = state[f"{conv}.conv2d.weight"] * scale
        out[f"{prefix}.2.weight"] = state[f"{norm}.weight"]
        out[f"{prefix}.2.bias"] = state[f"{norm}.bias"]
    for deconv, norm, prefix in (("deconv1", "in4", "net.8"), ("deconv2", "in5", "net.9")):
        out[f"{prefix}.2.weight"] = state[f"{deconv}.conv2d.weight"]
        out[f"{prefix}.3.weight"] = state[f"{norm}.weight"]
        out[f"{prefix}.3.bias"] = state[f"{norm}.bias"]
    out["net.11.weight"] = state["deconv3.conv2d.weight"] / 255.0
    out["net.11.bias"] = state["deconv3.conv2d.bias"] / 255.0
    return out


SPANDREL_MISSING = (
    "{path}: not a percepkit checkpoint nor a pytorch/examples style model; models from other "
    "SR projects (ESRGAN/RRDB, Real-ESRGAN Compact, SPAN, SwinIR, HAT, …) are read through the "
    "optional spandrel package, which is not installed: pip install 'percepkit[models]' (or pip "
    "install spandrel), then run the same command again.")


def load_spandrel(path: Path, state: Mapping[str, torch.Tensor]) -> SpandrelSR:
    """An SR network from a third-party state dict through spandrel (the optional extra)."""
    spandrel = import_spandrel(f"{path}", SPANDREL_MISSING.format(path=path))
    try:
        descriptor = spandrel.ModelLoader().load_from_state_dict(dict(state))
    except Exception as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        sample = ", ".join(list(state)[:4])
        raise CheckpointError(
            f"{path}: spandrel {spandrel.__version__} does not recognise this file ({first}; "
            f"first keys: {sample}); it is not a percepkit checkpoint or a pytorch/examples "
            f"style model either") from None
    problem = sr_problem(descriptor)
    if problem:
        raise CheckpointError(f"{path}: {problem}")
    return SpandrelSR(descriptor)


def convert(path: str | Path, state: Mapping[str, torch.Tensor] | None = None
            ) -> tuple[dict, dict[str, torch.Tensor], str]:
    """``(transform spec, percepkit state dict, description)`` of a third-party file (whose
    tensors are read here unless ``state`` already holds them).

    pytorch/examples style models map onto ``johnson_style``; SR models that spandrel detects
    become ``spandrel:ID`` with every constructor argument spandrel recorded, checked to rebuild
    a network with the same output.
    """
    state = read_state_dict(path) if state is None else state
    if is_examples_transformer_net(state):
        try:
            return dict(EXAMPLES_SPEC), examples_to_johnson_style(state), \
                "pytorch/examples fast_neural_style TransformerNet"
        except KeyError as e:
            raise CheckpointError(f"{path}: looks like a pytorch/examples TransformerNet but "
                                  f"lacks {e.args[0]!r}") from None
    source = load_spandrel(Path(path), state).eval()
    import spandrel

    what = f"{source.architecture} x{source.scale}" + (" (Y only)" if source.channels == 1 else "")
    try:
        spec = spec_of(source)
        rebuilt = TRANSFORMS.build(spec, where=f"{path}: transform").eval()
        weights = source.state_dict()
        rebuilt.load_state_dict(weights)
    except PercepkitError as e:
        raise CheckpointError(f"{path}: a {what} model that percepkit cannot rebuild from its "
                              f"constructor arguments ({e}); it can still be evaluated and run "
                              f"as it is") from None
    x = torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        same = torch.allclose(rebuilt(x), source(x), rtol=1e-4, atol=1e-5)
    if not same:
        raise CheckpointError(f"{path}: the {what} network rebuilt from {spec} does not give "
                              f"the file's output; it can still be evaluated and run as it is")
    return spec, weights, f"{what}, read by spandrel {spandrel.__version__}"


def load_foreign(path: str | Path, device: str | torch.device = "cpu") -> torch.nn.Module:
    """A third-party network as a percepkit transform in eval mode (the file is read once)."""
    state = read_state_dict(path)
    if not is_examples_transformer_net(state):
        return load_spandrel(Path(path), state).to(device).eval()
    spec, weights, _ = convert(path, state)
    model = TRANSFORMS.build(spec, where=f"{path}: transform")
    model.load_state_dict(weights)
    return model.to(device).eval()
