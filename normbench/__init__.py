"""normbench: compare normalization layers in PyTorch.

Public API: :func:`build_norm`, :func:`register_norm`, :func:`available_norms`, :func:`norm_spec` and
the :class:`ChannelLast` adapter for (N, L, C) token tensors.
"""

from normbench.norms import (
    ChannelLast,
    NormSpec,
    available_norms,
    build_norm,
    norm_spec,
    register_norm,
)

__version__ = "0.1.0"

__all__ = [
    "ChannelLast",
    "NormSpec",
    "__version__",
    "available_norms",
    "build_norm",
    "norm_spec",
    "register_norm",
]
