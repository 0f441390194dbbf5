"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# ../shared beside the repository: data and weights we may use but not redistribute.
SHARED_DIR = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared (beside the repo); skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip(
            f"shared data/weights directory {SHARED_DIR} not found; skipping a test that "
            f"needs real data or pretrained weights (not redistributable with the repo)"
        )
    return SHARED_DIR



@pytest.fixture
def one_torch_thread():
    """Tiny models run fastest (and deterministically) on one thread; the count is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
