"""The optimizers of a population: each member's SGD or AdamW step, with its own learning rate,
momentum and weight decay, as a few in-place tensor operations over the stacked parameters.

The formulas are torch's (``torch.optim.SGD`` and ``torch.optim.AdamW``, single-tensor path, as
:func:`normbench.train.make_optimizer` configures them); ``tests/test_population_optim.py`` ties each
member's trajectory to a separate torch optimizer. A member that is not ``alive`` keeps its parameters
unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor


def _per_member(values: Tensor, like: Tensor) -> Tensor:
    """``values`` (K,) shaped to broadcast over stacked tensors like ``like`` (K, ...), in its dtype
    (factors are computed in double, then rounded once, as torch rounds a Python float)."""
    return values.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class PopulationOptimizer:
    """``name`` (``sgd`` or ``adamw``) over the stacked ``params`` (K, ...) of K members.

    ``momentum`` and ``weight_decay`` are (K,) tensors; for AdamW ``momentum`` is β₁ and β₂ = 0.999,
    as in :func:`normbench.train.make_optimizer`. :meth:`step` takes each member's learning rate as a
    (K,) tensor and the (K,) boolean mask of members to update.
    """

    def __init__(
        self, name: str, params: Sequence[Tensor], momentum: Tensor, weight_decay: Tensor, eps: float = 1e-8
    ) -> None:
        if name not in ("sgd", "adamw"):
            raise ValueError(f"optim.name={name!r}; allowed: sgd, adamw")
        self.name, self.params, self.eps = name, list(params), eps
        self.momentum = momentum.double()
        self.weight_decay = weight_decay.double()
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]
        self.steps = 0

    @classmethod
    def for_members(cls, cfgs: Sequence[DictConfig], params: Sequence[Tensor]) -> PopulationOptimizer:
        """The optimizer of members with configs ``cfgs`` (one ``optim.name``; each its own momentum
        and weight decay) over their stacked ``params``."""
        device = params[0].device
        return cls(
            cfgs[0].optim.name,
            params,
            torch.tensor([c.optim.momentum for c in cfgs], dtype=torch.float64, device=device),
            torch.tensor([c.optim.weight_decay for c in cfgs], dtype=torch.float64, device=device),
        )

    @property
    def tensors(self) -> list[Tensor]:
        """The optimizer's state tensors (momentum buffers, moments)."""
        return [t for state in self.state for t in state.values()]

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: Tensor, alive: Tensor, all_alive: bool = False) -> None:
        """One step of every member at its learning rate ``lr`` (K,). Members not ``alive`` step with
        gradient 0 and learning rate 0, which leaves their parameters exactly as they are (their
        optimizer state is never read again); ``all_alive=True`` (known on the host) skips zeroing
        their gradients. ``grads`` are consumed (updated in place)."""
        self.steps += 1
        lr = torch.where(alive, lr.double(), 0.0)
        update = self._sgd if self.name == "sgd" else self._adamw
        for p, g, state in zip(self.params, grads, self.state, strict=True):
            if not all_alive:  # a diverged member's NaN gradient must not reach its parameters
                g.masked_fill_(~_per_member(alive, g).bool(), 0.0)
            update(p, g, state, lr)

    # In-place forms of torch's own updates; addcmul/addcdiv with the per-member factor inside round
    # as torch's scalar ``alpha``/``value`` forms do: each member's step is bit for bit its own
    # optimizer's on the CPU.

    def _sgd(self, p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        # torch.optim.SGD: d = g + wd·p; buf = d (first step) else μ·buf + d; p -= lr·buf
        d = g.addcmul_(p, _per_member(self.weight_decay, p))
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = d.clone()
        else:
            state["momentum_buffer"].mul_(_per_member(self.momentum, p)).add_(d)
        p.addcmul_(state["momentum_buffer"], _per_member(-lr, p))

    def _adamw(self, p: Tensor, g: Tensor, state: dict[str, Tensor], lr: Tensor) -> None:
        # torch.optim.AdamW: p ·= 1 − lr·wd; m = lerp(m, g, 1 − β₁); v = β₂·v + (1 − β₂)·g²;
        # p −= lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)   (bias corrections in double, as torch)
        beta1, beta2, t = self.momentum, 0.999, self.steps
        if not state:
            state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        m, v = state["exp_avg"], state["exp_avg_sq"]
        p.mul_(_per_member(1 - lr * self.weight_decay, p))
        m.lerp_(g, _per_member(1 - beta1, p))
        v.mul_(beta2).addcmul_(g, g, value=1 - beta2)
        step_size = lr / (1 - beta1**t)
        denom = (v.sqrt() / (1 - beta2**t) ** 0.5).add_(self.eps)
        p.addcdiv_(m * _per_member(-step_size, p), denom)
