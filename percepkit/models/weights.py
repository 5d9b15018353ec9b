"""Finding pretrained weights: local path, weights directory, torch cache, then a checked download.

Search order for ``weights: imagenet``:

1. every folder in ``PERCEPKIT_WEIGHTS`` (``os.pathsep``-separated),
2. torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps its downloads,
3. a download from torchvision's URL into torch's cache by :mod:`percepkit.models.hub`, checked
   against the SHA-256 prefix in its file name (skipped when ``PERCEPKIT_OFFLINE=1``).

If none works, :class:`MissingWeightsError` says in one sentence which file is missing and how to
supply it (:func:`percepkit.models.hub.missing`). Nothing here ever falls back to random weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MissingWeightsError
from ..runtime.files import env_folders
from . import hub


@dataclass(frozen=True)
class KnownWeights:
    """Where the ImageNet weights of one torchvision backbone can be found."""

    arch: str
    url: str
    local_names: tuple[str, ...]

    @property
    def cache_name(self) -> str:
        return self.url.rsplit("/", 1)[1]


TORCHVISION_WEIGHTS = {
    w.arch: w
    for w in (
        KnownWeights("vgg16", "https://download.pytorch.org/models/vgg16-397923af.pth",
                     ("vgg16_features_imagenet1k_v1.safetensors", "vgg16-397923af.pth")),
        KnownWeights("vgg19", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                     ("vgg19_features_imagenet1k_v1.safetensors", "vgg19-dcbb9e9d.pth")),
        KnownWeights("alexnet", "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth",
                     ("alexnet_features_imagenet1k_v1.safetensors", "alexnet-owt-7be5be79.pth")),
    )
}


def weights_dirs() -> list[Path]:
    """Folders listed in ``PERCEPKIT_WEIGHTS``."""
    return env_folders("PERCEPKIT_WEIGHTS")


def torch_cache_dir() -> Path:
    """torch's hub checkpoint cache, where torchvision stores downloaded weights."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a ``.safetensors`` or ``.pth`` state dict (tensors only: no pickled code runs).

    The reading is :func:`percepkit.models.foreign.read_state_dict`'s; problems are reported as
    :class:`MissingWeightsError`.
    """
    from ..errors import CheckpointError
    from .foreign import read_state_dict

    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} does not exist.")
    try:
        return read_state_dict(path)
    except CheckpointError as e:
        raise MissingWeightsError(f"weights file {e}") from None


def find_local(names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` found in the weights directories or the torch cache."""
    for folder in [*weights_dirs(), torch_cache_dir()]:
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def torchvision_features_state(arch: str, weights: str = "imagenet") -> dict[str, torch.Tensor]:
    """State dict of torchvision ``<arch>.features`` (keys ``features.N.weight``/``.bias``).

    ``weights`` is ``"imagenet"`` (search and download as described above) or a local file.
    """
    if weights != "imagenet":
        state = load_state_file(weights)
    else:
        known = TORCHVISION_WEIGHTS[arch]
        path = find_local((*known.local_names, known.cache_name))
        if path is None:
            path = _download_or_explain(known)
        state = load_state_file(path)
    features = {k: v for k, v in state.items() if k.startswith("features.")}
    if not features:
        raise MissingWeightsError(
            f"weights for {arch} have no 'features.*' keys (torchvision layout expected)."
        )
    return features


def _download_or_explain(known: KnownWeights) -> Path:
    try:
        return hub.download(known.url, torch_cache_dir() / known.cache_name)
    except hub.DownloadError as e:  # offline, no network, bad hash: explain, never go random
        reason = e.reason
    dirs = ", ".join(str(d) for d in weights_dirs()) or "unset"
    raise MissingWeightsError(hub.missing(
        f"ImageNet weights for {known.arch} ({' or '.join(known.local_names)})",
        [f"PERCEPKIT_WEIGHTS ({dirs})", str(torch_cache_dir())], reason,
        "put one of those files in a folder and set PERCEPKIT_WEIGHTS to it, or pass "
        "'weights: /path/to/file'"))
