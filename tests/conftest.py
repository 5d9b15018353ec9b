"""Shared fixtures. ``../shared`` (real images and weights) is optional: tests that need it skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PERCEPKIT_SHARED", REPO.parent / "shared"))

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
