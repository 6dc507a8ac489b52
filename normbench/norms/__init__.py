"""Normalization plugins: the registry and one module per built-in norm."""

from normbench.norms._layout import ChannelLast
from normbench.norms.registry import (
    NormSpec,
    available_norms,
    build_norm,
    iter_specs,
    norm_spec,
    plugin_classes,
    register_norm,
)

__all__ = [
    "ChannelLast",
    "NormSpec",
    "available_norms",
    "build_norm",
    "iter_specs",
    "norm_spec",
    "plugin_classes",
    "register_norm",
]
