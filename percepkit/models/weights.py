"""Finding pretrained weights: local path, weights directory, torch cache, then a checked download.

Search order for ``weights: imagenet``:

1. every folder in ``PERCEPKIT_WEIGHTS`` (``os.pathsep``-separated),
2. torch's hub cache (``$TORCH_HOME/hub/checkpoints``), where torchvision keeps its downloads,
3. a download from torchvision's URL, checked against the SHA-256 prefix in its file name
   (:func:`hash_prefix`)
   (skipped when ``PERCEPKIT_OFFLINE=1``).

If none works, :class:`MissingWeightsError` says in one sentence which file is missing and how to
supply it. Nothing here ever falls back to random weights.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import MissingWeightsError
from ..runtime.files import env_folders


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


def offline() -> bool:
    """True when ``PERCEPKIT_OFFLINE`` forbids downloads."""
    return os.environ.get("PERCEPKIT_OFFLINE", "").lower() in ("1", "true", "yes")


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


#: a SHA-256 prefix at the end of a file's stem, as torchvision and timm name their files
#: (``vgg16-397923af.pth``): a dash and 8 to 64 lowercase hex digits
HASH_IN_NAME = re.compile(r"-([0-9a-f]{8,64})$")


def hash_prefix(name: str) -> str | None:
    """The SHA-256 prefix a file name carries (``vgg16-397923af.pth`` -> ``397923af``), or None
    when it carries none (``my-style.safetensors``: "style" is a word, not a hash)."""
    match = HASH_IN_NAME.search(name.split(".")[0])
    return match.group(1) if match else None


def download(url: str, dest: Path, sha256: str | None = None) -> Path:
    """Download ``url`` to ``dest`` atomically, checked against ``sha256`` (a manifest's full
    digest) when given, else against the hash prefix in ``dest``'s name if it has one."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    prefix = sha256.lower() if sha256 else hash_prefix(dest.name)
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(60)  # an unreachable host must fail, not hang
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=prefix, progress=True)
    finally:
        socket.setdefaulttimeout(previous)
    return dest


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
    dest = torch_cache_dir() / known.cache_name
    reason = "downloads are disabled (PERCEPKIT_OFFLINE=1)"
    if not offline():
        try:
            return download(known.url, dest)
        except Exception as e:  # no network, bad hash, disk full: explain, never go random
            reason = f"the download from {known.url} failed ({type(e).__name__}: {e})"
    dirs = ", ".join(str(d) for d in weights_dirs()) or "unset"
    raise MissingWeightsError(
        f"ImageNet weights for {known.arch} are missing: none of "
        f"{', '.join(known.local_names)} is in PERCEPKIT_WEIGHTS ({dirs}) or {torch_cache_dir()}, "
        f"and {reason}; put one of those files in a folder and set PERCEPKIT_WEIGHTS to it, "
        f"or pass 'weights: /path/to/file'."
    )
