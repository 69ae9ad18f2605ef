"""Fixtures shared by the test modules."""

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def brain_mri_data() -> Path:
    """The brain-tumor-mri-4k class folders: $BRAIN_MRI_DATA, else ../shared/data/brain-tumor-mri-4k."""
    path = Path(os.environ.get("BRAIN_MRI_DATA") or REPO_ROOT.parent / "shared/data/brain-tumor-mri-4k")
    if not path.is_dir():
        pytest.fail(f"brain-tumor-mri-4k not found at {path}; set BRAIN_MRI_DATA to its folder")
    return path
