"""Optional packages (the ``percepkit[extra]`` extras): importing one, or one paragraph saying
which extra to install, or why an installed one fails to import.

The base install (``pip install torch torchvision && pip install -e '.[dev]'``) runs everything
except what these extras add:

=============== ============================ ==============================================
extra           packages                     what needs it
=============== ============================ ==============================================
``models``      spandrel                     third-party SR files, ``spandrel:*`` transforms
``export``      onnx, onnxruntime            ``percepkit export --format onnx`` (and its check)
``tensorboard`` tensorboard                  ``train.tensorboard: true`` (TensorBoard logs)
=============== ============================ ==============================================
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import Any

from ..errors import MissingExtraError

#: module -> the extra that installs it
EXTRAS = {"spandrel": "models", "onnx": "export", "onnxruntime": "export",
          "tensorboard": "tensorboard"}


def install_command(extra: str) -> str:
    """``pip install 'percepkit[extra]'``."""
    return f"pip install 'percepkit[{extra}]'"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def broken_import_message(module: str, error: BaseException) -> str:
    """Why an installed ``module`` fails to import, in one paragraph (no traceback).

    The common cause is a torch and torchvision that do not belong together (a CPU torch from
    one index and torchvision from PyPI): torchvision then fails with ``operator
    torchvision::nms does not exist``, and everything that imports it with it.
    """
    first = (str(error).strip().splitlines() or [""])[0][:200]
    torch_v, vision_v = _version("torch"), _version("torchvision")
    hint = ""
    if "torchvision" in str(error) or "operator" in str(error):
        hint = (f" This usually means torch ({torch_v}) and torchvision ({vision_v}) do not "
                f"match: install them together from one index, e.g. pip install --force-reinstall "
                f"torch torchvision (or both from the same --index-url).")
    return (f"the {module} package is installed but fails to import ({type(error).__name__}: "
            f"{first}).{hint}")


def missing_message(module: str, what: str, extra: str | None = None) -> str:
    """``what`` needs ``module``, which is not installed: the command that installs it."""
    extra = extra or EXTRAS.get(module)
    how = install_command(extra) + f" (or pip install {module})" if extra else \
        f"pip install {module}"
    return (f"{what} needs the optional {module} package, which is not installed: {how}, then "
            f"run the same command again.")


def import_optional(module: str, what: str, missing: str | None = None) -> Any:
    """Import ``module`` (an optional package) for ``what`` (e.g. ``"ONNX export"``).

    Raises :class:`MissingExtraError`: ``missing`` (or a sentence naming the extra's install
    command) when it is not installed; :func:`broken_import_message` when it is installed but
    its import fails (any exception: a mismatched torchvision raises ``RuntimeError``).
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        if e.name is not None and e.name != module and not e.name.startswith(f"{module}."):
            # the package is there; something it imports is missing or broken
            raise MissingExtraError(broken_import_message(module, e)) from None
        raise MissingExtraError(missing or missing_message(module, what)) from None
    except Exception as e:
        raise MissingExtraError(broken_import_message(module, e)) from None
