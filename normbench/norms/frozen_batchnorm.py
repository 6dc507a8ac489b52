"""BatchNorm with frozen statistics and affine parameters, for fine-tuning."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.norms._base import ChannelNorm, like_input
from normbench.norms.batchnorm import BatchNorm
from normbench.norms.registry import register_norm


@register_norm(
    "frozen_batchnorm",
    aliases=("frozenbn",),
    paper="Ioffe & Szegedy 2015 (arXiv:1502.03167); frozen for fine-tuning as in detectron2's FrozenBatchNorm2d",
    running_stats=True,
    population="wide",
)
class FrozenBatchNorm(ChannelNorm):
    r"""BatchNorm's eval-mode transform in every mode, with nothing learned or updated.

    .. math::
        y = \frac{x - \text{running\_mean}}{\sqrt{\text{running\_var} + \epsilon}} \cdot w + b

    ``weight``, ``bias``, ``running_mean`` and ``running_var`` are buffers (not parameters), so the
    optimizer and training mode leave them alone; the state dict loads from and into BatchNorm's
    (``num_batches_tracked`` is accepted and ignored). :meth:`from_batchnorm` and :meth:`to_batchnorm`
    convert a trained layer and back, keeping device, dtype and values. The input still receives
    gradients. A run trained from scratch would keep the initial statistics (mean 0, variance 1), so
    ``normbench-run`` refuses it; the layer is for a trained model's BatchNorms (``convert_norms``).

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(self, num_channels: int, eps: float = 1e-5) -> None:
        super().__init__(num_channels, eps, affine=False)
        del self.weight, self.bias
        self.register_buffer("weight", torch.ones(num_channels))
        self.register_buffer("bias", torch.zeros(num_channels))
        self.register_buffer("running_mean", torch.zeros(num_channels))
        self.register_buffer("running_var", torch.ones(num_channels))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: Tensor) -> Tensor:
        self.check_input(x)
        scale = self.weight * torch.rsqrt(self.running_var + self.eps)
        shift = self.bias - self.running_mean * scale
        shape = (1, -1, *[1] * (x.dim() - 2))
        return like_input(torch.mul(x, scale.view(shape)).add_(shift.view(shape)), x)

    @classmethod
    def from_batchnorm(cls, bn: nn.Module) -> FrozenBatchNorm:
        """A frozen copy of a BatchNorm (normbench's or torch's) on the same device and dtype.

        Raises:
            ValueError: ``bn`` keeps no running statistics (torch's ``track_running_stats=False``).
        """
        if getattr(bn, "running_mean", None) is None or getattr(bn, "running_var", None) is None:
            raise ValueError(
                f"FrozenBatchNorm.from_batchnorm: {type(bn).__name__} keeps no running statistics "
                "(track_running_stats=False), so there are none to freeze"
            )
        frozen = cls(bn.num_features if hasattr(bn, "num_features") else bn.num_channels, bn.eps)
        ref = bn.running_mean
        frozen = frozen.to(device=ref.device, dtype=ref.dtype)
        with torch.no_grad():
            frozen.running_mean.copy_(bn.running_mean)
            frozen.running_var.copy_(bn.running_var)
            if bn.weight is not None:
                frozen.weight.copy_(bn.weight)
                frozen.bias.copy_(bn.bias)
        return frozen

    def to_batchnorm(self) -> BatchNorm:
        """A trainable normbench BatchNorm with these values, device and dtype."""
        bn = BatchNorm(self.num_channels, self.eps).to(
            device=self.running_mean.device, dtype=self.running_mean.dtype
        )
        with torch.no_grad():
            for name in ("weight", "bias", "running_mean", "running_var"):
                getattr(bn, name).copy_(getattr(self, name))
        return bn.eval()

    def extra_repr(self) -> str:
        return f"{self.num_channels}, eps={self.eps}"
