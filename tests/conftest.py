"""Shared fixtures. ``../shared`` (real images and weights) is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEPKIT_SHARED", REPO.parent / "shared"))

# The same numbers on every CPU: `auto` precision stays fp32 here (and in the subprocesses the
# tests start) even where the CPU has bf16 units; the bf16 tests fake or force it explicitly.
os.environ["PERCEPKIT_CPU_BF16"] = "0"

# Under pytest-xdist each worker gets one thread, so workers don't oversubscribe the cores.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` with the real benchmark, training, style and content images."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"needs real images in {path} (the project's ../shared folder)")
    return path


@pytest.fixture(scope="session")
def real_weights_dir() -> Path:
    """A folder with the real ImageNet VGG16/AlexNet feature weights (PERCEPKIT_WEIGHTS)."""
    env = os.environ.get("PERCEPKIT_WEIGHTS")
    candidates = [Path(p) for p in env.split(os.pathsep)] if env else []
    for candidate in [*candidates, SHARED / "weights"]:
        if (candidate / "vgg16_features_imagenet1k_v1.safetensors").is_file():
            return candidate
    pytest.skip("needs the real ImageNet VGG16 weights: set PERCEPKIT_WEIGHTS to ../shared/weights")


@pytest.fixture
def isolated_weights(monkeypatch, tmp_path) -> Path:
    """No weights anywhere: empty PERCEPKIT_WEIGHTS and torch hub dir, downloads disabled."""
    monkeypatch.setenv("PERCEPKIT_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("PERCEPKIT_OFFLINE", "1")
    return tmp_path


# -- optional extras -------------------------------------------------------------------------------
#: the modules of each optional extra (pyproject.toml), for ``@pytest.mark.extra("models")``
EXTRA_MODULES = {"models": ("spandrel",), "export": ("onnx", "onnxruntime"),
                 "tensorboard": ("tensorboard",)}
_MISSING: dict[str, str | None] = {}


def missing_extra(extra: str) -> str | None:
    """Why the optional extra ``extra`` is unusable here (None: all its modules import)."""
    if extra not in _MISSING:
        import importlib

        _MISSING[extra] = None
        for module in EXTRA_MODULES[extra]:
            try:
                importlib.import_module(module)
            except Exception as e:  # not installed, or installed but broken
                first = (str(e).splitlines() or [""])[0]
                _MISSING[extra] = (f"needs the optional extra percepkit[{extra}] "
                                   f"(pip install 'percepkit[{extra}]'): {module}: "
                                   f"{type(e).__name__}: {first}")
                break
    return _MISSING[extra]


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Skip a test marked ``@pytest.mark.extra(NAME, ...)`` when an extra is missing (the
    README's install has none; CI runs them after installing the extras: ``-m extra``)."""
    for mark in item.iter_markers("extra"):
        for extra in mark.args:
            why = missing_extra(extra)
            if why:
                pytest.skip(why)


def recipe_extra(path: Path) -> str | None:
    """The optional extra a recipe file needs (``spandrel:*`` transforms: models), or None."""
    import yaml

    raw = yaml.safe_load(path.read_text()) or {}
    spec = raw.get("transform")
    name = spec.get("name", "") if isinstance(spec, dict) else str(spec or "")
    if name.startswith("spandrel"):
        return "models"
    if (raw.get("train") or {}).get("tensorboard"):
        return "tensorboard"
    return None


class _FailingImport:
    """A meta-path finder that makes importing one module fail with a given exception."""

    def __init__(self, name: str, error: BaseException) -> None:
        self.name, self.error = name, error

    def find_spec(self, name: str, path: object = None, target: object = None) -> object:
        import importlib.util

        if name == self.name or name.startswith(self.name + "."):
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec: object) -> None:
        return None

    def exec_module(self, module: object) -> None:
        raise self.error


@pytest.fixture
def fail_import(monkeypatch):
    """``fail_import("spandrel")``: importing it raises ImportError (as if not installed);
    ``fail_import("spandrel", RuntimeError(...))``: it is installed but its import fails (as
    with a torchvision that does not match torch)."""
    import sys

    def fail(name: str, error: BaseException | None = None) -> None:
        for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
            monkeypatch.delitem(sys.modules, key)
        err = error if error is not None else ModuleNotFoundError(
            f"No module named {name!r}", name=name)
        monkeypatch.setattr(sys, "meta_path", [_FailingImport(name, err), *sys.meta_path])

    return fail


# -- a full disk -----------------------------------------------------------------------------------
class _FullDiskFile:
    """A file whose writes stop half-way with ENOSPC, as on a full disk (half is written)."""

    def __init__(self, f) -> None:  # noqa: ANN001
        self._f = f

    def write(self, data) -> int:  # noqa: ANN001
        import errno

        self._f.write(bytes(data[: len(data) // 2]))
        self._f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._f, name)

    def __enter__(self) -> _FullDiskFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()


@pytest.fixture
def full_disk(monkeypatch):
    """``full_disk("step_00000004")``: from now on, writes through percepkit.runtime.files (atomic
    writes and appends) of files whose name contains that text fail half-way with ENOSPC;
    ``full_disk(None)`` frees the space again."""
    import tempfile

    from percepkit.runtime import files

    state: dict[str, object] = {"match": None, "fds": set()}
    real_mkstemp, real_fdopen, real_open = tempfile.mkstemp, os.fdopen, open

    def mkstemp(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        fd, name = real_mkstemp(*args, **kwargs)
        if state["match"] and state["match"] in name:
            state["fds"].add(fd)
        return fd, name

    def fdopen(fd, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        f = real_fdopen(fd, *args, **kwargs)
        if fd not in state["fds"]:
            return f
        state["fds"].discard(fd)  # the number is reused by later files
        return _FullDiskFile(f)

    def open_(path, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        f = real_open(path, *args, **kwargs)
        return _FullDiskFile(f) if state["match"] and state["match"] in str(path) else f

    monkeypatch.setattr(files.tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "fdopen", fdopen)
    monkeypatch.setattr(files, "open", open_, raising=False)

    def set_match(match: str | None) -> None:
        state["match"] = match

    return set_match
