"""Super-resolution architectures of spandrel as percepkit transforms: run, train, convert.

`spandrel <https://github.com/chaiNNer-org/spandrel>`_ (the optional extra ``pip install
'percepkit[models]'``) holds the architectures of ~40 restoration projects (Real-ESRGAN Compact,
ESRGAN/RRDB, SPAN, SwinIR, HAT, …) and detects them from state-dict keys.

* :class:`SpandrelSR` wraps one such network as an SR transform: RGB in [0, 1] in and out,
  padded to the network's size requirements, its tiling hint for percepkit's tiler, and the
  SRCNN protocol (:mod:`percepkit.nets.ychannel`) for one-channel (Y-only) networks. Its state dict
  uses the architecture's own keys, so weights saved by percepkit load in spandrel/chaiNNer.
* ``spandrel:Compact``, ``spandrel:SPAN``, ``spandrel:ESRGAN`` (alias ``spandrel:RRDB``),
  ``spandrel:SwinIR``, ``spandrel:HAT``, ``spandrel:PLKSR``, and ``spandrel`` with ``arch: ID``
  for any other SR architecture, are registered transforms: the recipe keys are the
  architecture's constructor arguments, except that the upscaling factor is always ``scale``.
  Every build checks that spandrel detects the built network from its weights alone as the
  same architecture with the same output, so a trained network loads in spandrel-based tools
  unchanged; arguments that do not show in the weights (e.g. SPAN's ``img_range``) are refused
  when set to other values.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ..errors import PercepkitError, RecipeError
from ..registry import TRANSFORMS
from ..registry.arguments import check_arguments
from .ychannel import y_channel_upscale

__all__ = ["SpandrelArchitecture", "SpandrelSR", "import_spandrel", "spec_of", "sr_problem",
           "verify_weights_file"]

#: How spandrel's constructors name the upscaling factor (percepkit's recipe key is ``scale``).
SCALE_ARGS = ("scale", "upscale", "up_scale", "upscaling_factor", "upscale_factor")


def import_spandrel(what: str, missing: str | None = None) -> Any:
    """The spandrel module, or one paragraph naming the install command (``missing`` instead
    of the default sentence), or saying why an installed spandrel fails to import."""
    from ..runtime.extras import import_optional

    return import_optional("spandrel", what, missing)


def sr_problem(descriptor: Any) -> str | None:
    """Why a spandrel model descriptor is not usable as an SR transform (None: it is)."""
    import spandrel

    name = descriptor.architecture.name
    if not isinstance(descriptor, spandrel.ImageModelDescriptor):
        return f"a {name} model that is not an image-to-image network"
    if descriptor.purpose != "SR" or descriptor.scale < 2:
        return (f"a {name} {descriptor.purpose.lower()} model (x{descriptor.scale}); percepkit "
                f"evaluates, runs and trains super-resolution models only")
    channels = (descriptor.input_channels, descriptor.output_channels)
    if channels not in ((3, 3), (1, 1)):
        return (f"a {name} model with {channels[0]} input and {channels[1]} output channels; "
                f"RGB-to-RGB and Y-to-Y (one-channel) models are supported")
    return None


# -- the transform --------------------------------------------------------------------------------
def _drop_model_prefix(module: nn.Module, state: dict, prefix: str, _meta: Any) -> None:
    inner = prefix + "model."
    for key in [k for k in state if k.startswith(inner)]:
        state[prefix + key[len(inner):]] = state.pop(key)


def _add_model_prefix(module: nn.Module, state: dict, prefix: str, *_: Any) -> None:
    for key in [k for k in state if k.startswith(prefix)]:
        state[prefix + "model." + key[len(prefix):]] = state.pop(key)


class SpandrelSR(nn.Module):
    """A super-resolution network of a spandrel architecture, as a percepkit transform.

    The input is padded (reflection) to the network's size requirements and the output cropped
    back. ``tile_margin`` / ``tiling`` tell percepkit's tiler how far a tile must see and
    whether tiling is safe (spandrel's hint: ``supported``, ``discouraged``, ``internal``).
    One-channel networks get MATLAB Y in and bicubic Cb/Cr (:func:`y_channel_upscale`).
    ``state_dict()`` and ``load_state_dict()`` use the architecture's own keys (no prefix).
    """

    task = "sr"

    def __init__(self, descriptor: Any, model: nn.Module | None = None) -> None:
        super().__init__()
        self.model = descriptor.model if model is None else model
        self.scale = int(descriptor.scale)
        self.channels = int(descriptor.input_channels)
        req = descriptor.size_requirements
        self.size_multiple = max(1, int(req.multiple_of))
        self.min_size = int(req.minimum)
        self.square = bool(req.square)
        self.tiling = descriptor.tiling.name.lower()
        self.architecture = descriptor.architecture.name
        self.arch_id = descriptor.architecture.id
        self.purpose = descriptor.purpose
        # spandrel's own way of calling the network (a few return tuples, e.g. MMRealSR)
        self._call_fn = getattr(descriptor, "_call_fn", None)
        self.tile_margin = None if _conv_only(self.model) else 64
        self.register_state_dict_post_hook(_drop_model_prefix)
        self.register_load_state_dict_pre_hook(_add_model_prefix)

    def _upscale(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        th, tw = max(h, self.min_size), max(w, self.min_size)
        if self.square:
            th = tw = max(th, tw)
        m = self.size_multiple
        th, tw = -(-th // m) * m, -(-tw // m) * m
        if (th, tw) != (h, w):
            mode = "reflect" if th - h < h and tw - w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, tw - w, 0, th - h), mode=mode)
        else:
            x = x.clone()  # some networks (RCAN) change their input in place
        y = self._call_fn(self.model, x) if self._call_fn is not None else self.model(x)
        return y[..., : h * self.scale, : w * self.scale]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels == 1:
            return y_channel_upscale(self._upscale, x, self.scale)
        return self._upscale(x)


def _conv_only(model: nn.Module) -> bool:
    """Whether the tiler can measure the receptive field (no attention or global pooling)."""
    local = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.SiLU, nn.GELU,
             nn.Sigmoid, nn.Tanh, nn.Identity, nn.PixelShuffle, nn.Upsample, nn.Sequential,
             nn.ModuleList, nn.Dropout)
    for m in model.modules():
        if m is model or isinstance(m, local):
            continue
        if any(isinstance(c, (nn.Linear, nn.AdaptiveAvgPool2d, nn.LayerNorm))
               for c in m.modules()):
            return False
    return True


# -- building from constructor arguments ----------------------------------------------------------
def _constructor(arch_id: str) -> tuple[type, str]:
    """spandrel's model class of ``arch_id`` and the name of its upscaling-factor argument."""
    import importlib

    spandrel = import_spandrel(f"transform spandrel:{arch_id}")
    known = [a.architecture.id for a in spandrel.MAIN_REGISTRY.architectures()]
    if arch_id not in known:
        import difflib

        close = difflib.get_close_matches(arch_id, known, n=2)
        hint = f"did you mean {' or '.join(close)}? " if close else ""
        raise RecipeError(f"transform spandrel:{arch_id}: spandrel {spandrel.__version__} has no "
                          f"architecture {arch_id!r}; {hint}its architectures: "
                          f"{', '.join(sorted(known))}")
    module = importlib.import_module(f"spandrel.architectures.{arch_id}")
    cls = getattr(module, arch_id, None)
    params = inspect.signature(cls).parameters if inspect.isclass(cls) else {}
    scale_arg = next((n for n in SCALE_ARGS if n in params), None)
    if scale_arg is None:
        raise RecipeError(f"transform spandrel:{arch_id}: not a trainable super-resolution "
                          f"architecture (spandrel exposes no single constructor with an "
                          f"upscaling factor for it)")
    return cls, scale_arg


class SpandrelArchitecture:
    """A spandrel architecture as a registered transform: ``(scale, **constructor arguments)``.

    The signature shown to the registry's argument check is the architecture's own (read from
    spandrel when it is first needed; without spandrel it accepts anything and building names
    the install command).
    """

    task = "sr"

    def __init__(self, arch_id: str, summary: str, defaults: Mapping[str, Any] | None = None
                 ) -> None:
        self.arch_id = arch_id
        self.defaults = dict(defaults or {})
        self.__doc__ = summary
        self.__qualname__ = f"SpandrelArchitecture[{arch_id}]"

    @property
    def __signature__(self) -> inspect.Signature:  # read by inspect.signature
        scale = inspect.Parameter("scale", inspect.Parameter.KEYWORD_ONLY, default=4,
                                  annotation=int)
        try:
            cls, scale_arg = _constructor(self.arch_id)
        except PercepkitError:  # spandrel missing or no such architecture: building says why
            rest = inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)
            return inspect.Signature([scale, rest])
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY,
                            default=self.defaults.get(n, p.default))
                  for n, p in inspect.signature(cls).parameters.items() if n != scale_arg]
        return inspect.Signature([scale, *params])

    @property
    def __annotations__(self) -> dict[str, Any]:  # read by typing.get_type_hints
        try:
            cls, scale_arg = _constructor(self.arch_id)
            hints = typing.get_type_hints(cls.__init__)
        except Exception:  # unresolvable annotations: the registry checks names only
            return {}
        hints.pop(scale_arg, None)
        return {"scale": int, **hints, "return": SpandrelSR}

    def __call__(self, scale: int = 4, **kwargs: Any) -> SpandrelSR:
        cls, scale_arg = _constructor(self.arch_id)
        where = f"transform spandrel:{self.arch_id}"
        args = {**self.defaults, **kwargs, scale_arg: scale}
        try:
            net = cls(**args)
        except Exception as e:  # the architecture's own argument checks
            given = kwargs or "its default arguments"
            raise RecipeError(f"{where}: {cls.__name__} cannot be built with {given} and scale "
                              f"{scale} ({type(e).__name__}: {e})") from None
        return SpandrelSR(_detect_as_built(net, self.arch_id, where), model=net)


def _probe(descriptor: Any) -> torch.Tensor:
    """A fixed random input of the smallest size >= 16 that meets the network's requirements."""
    req = descriptor.size_requirements
    side = -(-max(16, req.minimum) // req.multiple_of) * req.multiple_of
    return torch.rand(1, descriptor.input_channels, side, side,
                      generator=torch.Generator().manual_seed(0))


def _detect_as_built(net: nn.Module, arch_id: str, where: str) -> Any:
    """spandrel's descriptor of ``net`` detected from its weights alone, checked to give the same
    architecture and the same output (so a file of these weights loads in spandrel tools)."""
    import spandrel

    with torch.random.fork_rng(devices=[]), torch.no_grad():  # leave the global RNG as it was
        try:  # ModelLoader's detection, without its move to the CPU (meta networks stay meta)
            descriptor = spandrel.MAIN_REGISTRY.load(net.state_dict())
        except Exception as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise RecipeError(f"{where}: spandrel {spandrel.__version__} does not recognise the "
                              f"network these arguments build ({first}), so spandrel-based "
                              f"tools could not load its weights; change the arguments") from None
        problem = sr_problem(descriptor)
        if descriptor.architecture.id != arch_id or problem:
            got = problem or f"a {descriptor.architecture.id} network"
            raise RecipeError(f"{where}: spandrel reads the weights of the built network as "
                              f"{got}; change the arguments")
        if any(p.is_meta for p in net.parameters()):
            return descriptor  # recipe check builds on the meta device: no values to compare
        x = _probe(descriptor)
        call = getattr(descriptor, "_call_fn", None) or (lambda m, t: m(t))
        was_training = net.training
        net.eval()
        try:
            ours = call(net, x.clone())
            theirs = call(descriptor.model.eval(), x.clone())
        finally:
            net.train(was_training)
        if ours.shape != theirs.shape or not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
            raise RecipeError(
                f"{where}: spandrel rebuilds a different network from the weights alone (an "
                f"argument that leaves no trace in the weights differs from spandrel's "
                f"default), so chaiNNer and other spandrel tools would run the trained weights "
                f"wrongly; keep such arguments at their defaults")
    return descriptor


def verify_weights_file(path: Any, model: SpandrelSR) -> str:
    """Load a weights file with spandrel's own loader (as chaiNNer does) and check that it is
    ``model``: the same architecture, scale and output. Returns what spandrel detected."""
    spandrel = import_spandrel("checking the file with spandrel")
    where = f"{path}: written, but spandrel {spandrel.__version__}"
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except Exception as e:
        raise PercepkitError(f"{where} cannot load it ({type(e).__name__}: {e})") from None
    if descriptor.architecture.id != model.arch_id or descriptor.scale != model.scale:
        raise PercepkitError(f"{where} reads it as {descriptor.architecture.id} "
                             f"x{descriptor.scale}, not {model.arch_id} x{model.scale}")
    x = _probe(descriptor)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ours = model._upscale(x.to(next(model.parameters()).device)).cpu().clamp(0, 1)
        theirs = descriptor(x)
    finally:
        model.train(was_training)
    if not torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5):
        raise PercepkitError(f"{where} runs it with a different output")
    return f"{descriptor.architecture.name} x{descriptor.scale}"


def spec_of(model: SpandrelSR) -> dict[str, Any]:
    """The transform spec that rebuilds ``model``: ``spandrel:ID`` (or ``spandrel`` with ``arch:
    ID`` for architectures without their own entry), ``scale`` and every constructor argument
    spandrel recorded (JSON values only)."""
    cls, scale_arg = _constructor(model.arch_id)
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()}
    name = f"spandrel:{model.arch_id}"
    spec: dict[str, Any] = {"name": name} if name in TRANSFORMS else \
        {"name": "spandrel", "arch": model.arch_id}
    spec["scale"] = model.scale
    for key, value in getattr(model.model, "hyperparameters", {}).items():
        if key == scale_arg or key not in defaults:
            continue
        value = list(value) if isinstance(value, tuple) else value
        if _is_json(value):
            spec[key] = value
        elif value is not defaults.get(key):
            raise PercepkitError(f"spandrel:{model.arch_id}: its argument {key}={value!r} "
                                 f"cannot be stored in a recipe")
    return spec


def _is_json(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_json(v) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v) for k, v in value.items())
    return False


# -- the registered architectures ----------------------------------------------------------------
for _id, _aliases, _summary, _defaults in (
    ("Compact", (), "Real-ESRGAN's SRVGGNetCompact (spandrel): plain 3x3 convs + PReLU, pixel "
     "shuffle, nearest skip; fast", {}),
    ("SPAN", (), "SPAN (spandrel), NTIRE 2024 efficient SR winner: parameter-free attention "
     "blocks", {"num_in_ch": 3, "num_out_ch": 3}),
    ("ESRGAN", ("spandrel:RRDB",), "ESRGAN's RRDBNet (spandrel): residual-in-residual dense "
     "blocks, as in Real-ESRGAN x4plus", {}),
    ("SwinIR", (), "SwinIR (spandrel): Swin-transformer SR (by default pixelshuffle upsampler, "
     "window 8)",
     {"upsampler": "pixelshuffle", "window_size": 8}),
    ("HAT", (), "HAT (spandrel): hybrid attention transformer SR (by default window 16)",
     {"window_size": 16}),
    ("PLKSR", (), "PLKSR (spandrel): partial large-kernel CNN for efficient SR", {}),
):
    TRANSFORMS.add(SpandrelArchitecture(_id, _summary, _defaults), f"spandrel:{_id}",
                   aliases=_aliases)


@TRANSFORMS.register("spandrel")
def spandrel_architecture(arch: str, scale: int = 4, **kwargs: Any) -> SpandrelSR:
    """Any SR architecture of spandrel by its id: {name: spandrel, arch: DAT, scale: 4, ...}."""
    registered = f"spandrel:{arch}"
    builder = TRANSFORMS.get(registered) if registered in TRANSFORMS else \
        SpandrelArchitecture(arch, "")
    problems = check_arguments(builder, {"scale": scale, **kwargs})
    if problems:
        raise RecipeError(f"transform spandrel {arch}: " + "; ".join(problems))
    return builder(scale=scale, **kwargs)
