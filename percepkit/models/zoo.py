"""The model zoo: trained networks usable by name (``percepkit stylize candy ...``).

Every model is a percepkit checkpoint (safetensors, the recipe in its metadata) holding only the
network's weights, plus a ``card`` in its metadata (data, steps, CPU time, measured metrics,
licence). Models are registered in :data:`percepkit.registry.MODELS` from
``assets/models/manifest.json`` (built-in) or by plugins; a name is resolved to a file by
:meth:`ZooModel.path`, which looks in this order:

1. the package's own ``assets/models`` folder (small models ship inside the package),
2. every folder in ``PERCEPKIT_MODELS`` (``os.pathsep``-separated),
3. the cache folder ``$PERCEPKIT_CACHE/models`` (default ``~/.cache/percepkit/models``),
4. a download from the model's ``url`` into that cache (:mod:`percepkit.models.hub`, checked
   against the manifest's SHA-256; not when ``PERCEPKIT_OFFLINE=1``).

The file's SHA-256 is checked before use; a missing or damaged file is one clear sentence
(:class:`~percepkit.errors.CheckpointError`), never a silent substitute. Names become networks
through :mod:`percepkit.models.loader`, like every other name or file.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..registry import MODELS
from ..runtime.files import asset_path, env_folders, sha256_file
from . import hub

MANIFEST = "manifest.json"


def package_models_dir() -> Path:
    """The folder of the models that ship inside the package."""
    return asset_path("models")


def models_dirs() -> list[Path]:
    """Folders listed in ``PERCEPKIT_MODELS``."""
    return env_folders("PERCEPKIT_MODELS")


def cache_dir() -> Path:
    """Where downloaded models are kept (``$PERCEPKIT_CACHE/models``)."""
    return hub.cache_dir("models")


@dataclass
class ZooModel:
    """A trained network known by name: its file, checksum and a one-line summary."""

    name: str
    file: str
    sha256: str
    task: str
    summary: str
    url: str | None = None

    def __post_init__(self) -> None:
        self.__doc__ = self.summary  # what `percepkit list models` shows

    def __call__(self, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The network, ready for inference (eval mode) on ``device``."""
        from .loader import read_network

        return read_network(self.path(), device=device)

    def candidates(self) -> list[Path]:
        """Every place the file is looked for, in order."""
        return [d / self.file for d in [package_models_dir(), *models_dirs(), cache_dir()]]

    def path(self) -> Path:
        """The verified local file of this model (downloading it if allowed and needed)."""
        for candidate in self.candidates():
            if candidate.is_file():
                return self._verified(candidate)
        return self._verified(self._download())

    def card(self) -> dict[str, Any]:
        """The model card stored in the file's metadata (metrics, data, steps, licence)."""
        from .checkpoint import read_metadata

        card = read_metadata(self.path()).get("card")
        return dict(card) if isinstance(card, Mapping) else {}

    def _verified(self, path: Path) -> Path:
        digest = sha256_file(path)
        if digest != self.sha256:
            raise CheckpointError(
                f"model {self.name!r}: {path} has SHA-256 {digest[:16]}…, expected "
                f"{self.sha256[:16]}…; the file is damaged or a different version — delete it "
                f"and reinstall percepkit (or put the right file in PERCEPKIT_MODELS)")
        return path

    def _download(self) -> Path:
        where = [str(c.parent) for c in self.candidates()]
        if self.url is None:
            raise CheckpointError(hub.missing(
                f"model {self.name!r} ({self.file})", where, "it has no download address",
                "put the file in a folder listed in PERCEPKIT_MODELS"))
        try:
            return hub.download(self.url, cache_dir() / self.file, sha256=self.sha256)
        except hub.DownloadError as e:
            raise CheckpointError(hub.missing(
                f"model {self.name!r} ({self.file})", where, e.reason,
                f"download {self.url} by hand into a folder listed in PERCEPKIT_MODELS")) from None


def _register_builtin() -> None:
    manifest = package_models_dir() / MANIFEST
    if not manifest.is_file():
        return
    for name, info in json.loads(manifest.read_text(encoding="utf-8")).items():
        MODELS.add(ZooModel(name=name, **info), name)


_register_builtin()


def package(checkpoint: str | Path, out: str | Path, card: Mapping[str, Any]) -> str:
    """Write a zoo file from a training checkpoint: weights only (EMA if any), metadata + card.

    Returns the SHA-256 of the written file.
    """
    from .checkpoint import Checkpoint, save_model

    read = Checkpoint.read(checkpoint)
    meta, weights = read.meta, read.weights()  # the EMA weights if the run kept them
    if not weights:
        raise CheckpointError(f"{checkpoint}: checkpoint holds no model weights")
    keep = ("task", "transform", "recipe", "recipe_name", "step", "iterations", "batch_size",
            "world_size", "seed", "best", "val", "percepkit_version", "torch_version",
            "python_version", "device", "created")
    metadata = {k: meta[k] for k in keep if k in meta}
    metadata["card"] = dict(card)
    path = save_model(out, weights, metadata)
    return sha256_file(path)
