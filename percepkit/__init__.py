"""percepkit: perceptual losses for real-time style transfer and super-resolution.

Importing the package is cheap: it imports neither torch nor any part. The public API
(docs/api.md) is imported on first use: ``percepkit.create_loss``, ``create_metric``, ``load``,
``list_models``, ``list_losses``, ``list_metrics``, ``Predictor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

__all__ = ["Loss", "MetricLoss", "PaddedNet", "Predictor", "__version__", "create_loss",
           "create_metric", "list_losses", "list_metrics", "list_models", "load"]

#: what ``percepkit.<name>`` gives, each from :mod:`percepkit.api`
_API = frozenset(__all__) - {"__version__"}

if TYPE_CHECKING:
    from .api import (
        Loss,
        MetricLoss,
        PaddedNet,
        Predictor,
        create_loss,
        create_metric,
        list_losses,
        list_metrics,
        list_models,
        load,
    )


def __getattr__(name: str) -> Any:
    """The public API, imported on first use (``import percepkit`` stays free of torch)."""
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'percepkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
