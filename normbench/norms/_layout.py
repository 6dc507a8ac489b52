"""Applying channel-first plugins to channel-last token tensors (N, L, C), as used by Transformers."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

Layout = Literal["token", "sequence"]
LAYOUTS: tuple[Layout, ...] = ("token", "sequence")


class ChannelLast(nn.Module):
    """Wrap a channel-first norm so it takes (N, L, C) tensors and returns (N, L, C).

    Two readings of a token tensor, chosen with ``layout``:

    * ``"token"`` (default): every token is a sample; the norm sees (N·L, C). This is what
      Transformers mean by LayerNorm (statistics per token over C, ``torch.nn.LayerNorm(C)``), and
      BatchNorm pools its statistics over all N·L tokens.
    * ``"sequence"``: the sequence is the spatial axis; the norm sees (N, C, L). Needed by plugins that
      need spatial positions (instance norm: per sample and channel over L).

    The state dict is the wrapped module's, under ``norm.``.
    """

    def __init__(self, norm: nn.Module, layout: Layout = "token") -> None:
        super().__init__()
        if not isinstance(norm, nn.Module):
            raise TypeError(
                f"ChannelLast wraps a norm module (e.g. build_norm('layernorm', C)), got {norm!r}"
            )
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be 'token' or 'sequence', got {layout!r}")
        self.norm = norm
        self.layout = layout

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 3:
            raise ValueError(f"ChannelLast: expected (N, L, C) input, got shape {tuple(x.shape)}")
        try:
            if self.layout == "token":
                n, length, c = x.shape
                return self.norm(x.reshape(n * length, c)).reshape(n, length, c)
            return self.norm(x.transpose(1, 2)).transpose(1, 2)
        except (ValueError, RuntimeError):  # checked here, not on every step: the norm saw another shape
            channels = _channels(self.norm)
            if channels is not None and x.shape[-1] != channels:
                raise ValueError(
                    f"ChannelLast: expected (N, L, {channels}) input, got shape {tuple(x.shape)}"
                ) from None
            raise

    def extra_repr(self) -> str:
        return f"layout={self.layout!r}"


def _channels(norm: nn.Module) -> int | None:
    """The channels ``norm`` takes, where it says (the registry's norms, torch's BatchNorm, GroupNorm and a
    LayerNorm over one axis), else None."""
    for attribute in ("num_channels", "num_features"):
        value = getattr(norm, attribute, None)
        if isinstance(value, int):
            return value
    shape = getattr(norm, "normalized_shape", None)
    return shape[0] if isinstance(shape, tuple) and len(shape) == 1 else None
