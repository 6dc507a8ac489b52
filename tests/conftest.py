from __future__ import annotations

import math
import os

import pytest
import torch

if not torch.cuda.is_available():  # the Triton kernels run on the CPU through Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from normbench import norm_spec
from normbench.accel import kernels, kernels_setting
from normbench.norms.registry import REGISTRY

C = 6
SHAPES = {
    "features": (8, C),
    "1d": (4, C, 5),
    "2d": (4, C, 3, 3),
    "3d": (2, C, 2, 3, 2),
}


def fits(name: str, shape: tuple[int, ...]) -> bool:
    """Does the plugin accept inputs of this shape (by its declared metadata)?"""
    return math.prod(shape[2:]) >= norm_spec(name).min_spatial_positions


def randomize_affine(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter a non-trivial value so affine bugs cannot hide behind 1s and 0s."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen, dtype=p.dtype) + 0.5)


@pytest.fixture(autouse=True)
def default_kernels():
    """Every test starts with runtime.kernels=auto, and a run that set another leaves it behind."""
    assert kernels_setting() == "auto", "a test left another kernels setting behind"
    with kernels("auto"):
        yield


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


# One intra-op thread: tiny tensors gain nothing from more, and parallel CI jobs would contend.
torch.set_num_threads(1)


@pytest.fixture
def isolated_registry(monkeypatch):
    """Let a test register or discover plugins, then restore the registry as it was."""
    REGISTRY.ensure_loaded()
    saved = (dict(REGISTRY._specs), dict(REGISTRY._keys), dict(REGISTRY.plugin_errors))
    yield REGISTRY
    REGISTRY._specs, REGISTRY._keys, REGISTRY.plugin_errors = saved
    REGISTRY._loaded = True
