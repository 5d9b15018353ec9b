"""percepkit: perceptual losses for real-time style transfer and super-resolution.

Importing the package is cheap: registries import built-in parts and plugins on first lookup.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
