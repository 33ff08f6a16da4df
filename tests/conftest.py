"""Shared paths and fixtures. Test modules import the paths (`from conftest import MODELS`)
and ask for the fixtures by name."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import spa  # noqa: F401 - before numpy: spa sets OpenBLAS's thread timeout (spa/__init__.py)

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / "models"  # the CNN fixtures; transformers/, trained/ and regression/ below it
TRANSFORMERS = MODELS / "transformers"
REGRESSION = MODELS / "regression"


@pytest.fixture
def resnet_copy(tmp_path) -> Path:
    """models/resnet_basic.onnx copied into the test's own folder (free to write beside)."""
    return Path(shutil.copy(MODELS / "resnet_basic.onnx", tmp_path / "resnet_basic.onnx"))
