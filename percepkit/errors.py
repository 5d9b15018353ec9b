"""The one exception type that users see as a clear message instead of a traceback."""

from __future__ import annotations


class PercepkitError(Exception):
    """A problem with the user's input (name, recipe, file, weights) rather than a bug.

    The CLI prints ``str(error)`` as one paragraph and exits with code 2.
    """


class MissingWeightsError(PercepkitError):
    """Pretrained weights are neither cached, in the weights directory, nor downloadable."""


class RecipeError(PercepkitError):
    """A recipe is invalid; the message names the file, the key path and what was expected."""


class CheckpointError(PercepkitError):
    """A checkpoint is truncated, foreign or otherwise unreadable."""


class ImageError(PercepkitError):
    """An image file cannot be read or is unusable (message names the file and the reason)."""


class MissingExtraError(PercepkitError):
    """An optional package (a ``percepkit[extra]``) is needed but missing or fails to import;
    the message names the ``pip install`` command."""


class WriteError(PercepkitError):
    """A file or folder cannot be written (disk full, quota, read-only, permission, a file in
    the way); the message names the path. Nothing half-written is left behind. ``errno`` is
    the OSError's."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno
