"""percepkit: perceptual losses for real-time style transfer and super-resolution.

Importing the package is cheap: registries import built-in parts and plugins on first lookup.
"""

from __future__ import annotations

__version__ = "0.2.0"

__all__ = ["__version__", "load"]


def load(model: str, device: str = "cpu"):  # noqa: ANN201 (torch is imported lazily)
    """A ready network (eval mode) from a model name (``percepkit.load("candy")``, see
    ``percepkit list models``) or any percepkit checkpoint file."""
    from .zoo import load as _load

    return _load(model, device=device)
