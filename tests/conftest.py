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

# The built-ins' options away from their defaults (each option of each built-in in one case at least),
# against the same reference formulas: the fused kernels have a branch for several of them.
OPTION_CASES = [
    ("batchnorm", {"affine": False, "momentum": None, "eps": 0.1}),
    ("batchnorm", {"track_running_stats": False}),
    ("batchnorm", {"positions": 9, "momentum": 0.5}),  # SHAPES["2d"] has 9 positions
    ("batchrenorm", {"warmup_steps": 0, "r_max": 1.5, "d_max": 0.5, "r_max_steps": 2, "d_max_steps": 2}),
    ("batchrenorm", {"momentum": 0.3, "eps": 0.1}),
    ("batchrenorm", {"warmup_steps": 1, "affine": False}),
    ("evonorm_b0", {"momentum": 0.5, "affine": False, "eps": 0.1}),
    ("evonorm_s0", {"num_groups": 2, "eps": 0.1}),
    ("evonorm_s0", {"num_groups": 3, "affine": False}),
    ("frn", {"learnable_eps": True}),
    ("frn", {"affine": False, "eps": 0.01}),
    ("frozen_batchnorm", {"eps": 0.1}),
    ("ghost_batchnorm", {"ghost_batch_size": 3, "eps": 0.1}),
    ("ghost_batchnorm", {"ghost_batch_size": 2, "momentum": None, "affine": False}),
    ("ghost_batchnorm", {"ghost_batch_size": 3, "track_running_stats": False}),
    ("groupnorm", {"group_size": 2}),
    ("groupnorm", {"num_groups": 3, "affine": False, "eps": 0.3}),
    ("instancenorm", {"affine": False, "eps": 0.2}),
    ("layernorm", {"affine": False, "eps": 0.2}),
    ("rmsnorm", {"bias": True, "eps": 0.1}),
    ("rmsnorm", {"affine": False}),
    ("switchnorm", {"momentum": 0.3, "affine": False, "eps": 0.1}),
    ("sync_batchnorm", {"momentum": None, "eps": 0.1}),
    ("sync_batchnorm", {"track_running_stats": False, "affine": False}),
    ("sync_batchnorm", {"positions": 9}),
    ("ws_groupnorm", {"num_groups": 2, "affine": False, "eps": 0.1}),
    ("ws_groupnorm", {"group_size": 3}),
]


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
