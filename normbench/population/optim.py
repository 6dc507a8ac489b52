"""The optimizers of a population: each member's SGD or AdamW step, with its own learning rate,
momentum and weight decay, as a few multi-tensor (``torch._foreach_*``) operations over the stacked
parameters - one call per operation for all of them, not one per parameter.

The formulas are torch's (``torch.optim.SGD`` and ``torch.optim.AdamW``, single-tensor path, as
:func:`normbench.train.make_optimizer` configures them); ``tests/test_population_optim.py`` ties each
member's trajectory to a separate torch optimizer. A member that is not ``alive`` keeps its parameters
unchanged. The step count lives on the parameters' device and AdamW's bias corrections are computed
there, so a step captured as a CUDA graph (:mod:`normbench.capture`) replays with the count going on.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from omegaconf import DictConfig
from torch import Tensor

BETA2 = 0.999  # AdamW's β₂, as normbench.train.make_optimizer sets it


class _PerMember:
    """(K,) per-member factors, shaped to broadcast over stacked tensors (K, ...) in their dtype: cast
    once per dtype and rank (computed in double, then rounded once, as torch rounds a Python float)."""

    def __init__(self, values: Tensor) -> None:
        self.values = values
        self._shaped: dict[tuple[torch.dtype, int], Tensor] = {}

    def over(self, like: Tensor) -> Tensor:
        key = (like.dtype, like.dim())
        if key not in self._shaped:
            self._shaped[key] = self.values.to(like.dtype).view(-1, *([1] * (like.dim() - 1)))
        return self._shaped[key]

    def each(self, tensors: Sequence[Tensor]) -> list[Tensor]:
        """The factors over every one of ``tensors``: the second list of a ``torch._foreach_*`` call."""
        return [self.over(t) for t in tensors]


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
        self._momentum, self._weight_decay = _PerMember(self.momentum), _PerMember(self.weight_decay)
        # torch skips a zero weight decay; adding 0·p would give the same numbers at one more pass
        self._decays = bool(self.weight_decay.any())
        self.state: list[dict[str, Tensor]] = [{} for _ in self.params]
        self.count = torch.zeros((), dtype=torch.float64, device=self.momentum.device)

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
    def steps(self) -> int:
        """Steps taken (read from the device: for checkpoints, not inside the step loop)."""
        return int(self.count.item())

    @steps.setter
    def steps(self, value: int) -> None:
        self.count.fill_(value)

    @property
    def tensors(self) -> list[Tensor]:
        """The optimizer's state tensors (momentum buffers, moments, the step count)."""
        return [*(t for state in self.state for t in state.values()), self.count]

    @torch.no_grad()
    def step(self, grads: Sequence[Tensor], lr: Tensor, alive: Tensor, all_alive: bool = False) -> None:
        """One step of every member at its learning rate ``lr`` (K,). Members not ``alive`` step with
        gradient 0 and learning rate 0, which leaves their parameters exactly as they are (their
        optimizer state is never read again); ``all_alive=True`` (known on the host) skips zeroing
        their gradients. ``grads`` are consumed (updated in place)."""
        grads = list(grads)
        self.count.add_(1)
        lr = torch.where(alive, lr.double(), 0.0)
        if not all_alive:  # a diverged member's NaN gradient must not reach its parameters
            frozen = ~alive
            for g in grads:
                g.masked_fill_(frozen.view(-1, *([1] * (g.dim() - 1))), 0.0)
        if self.name == "sgd":
            self._sgd(grads, _PerMember(-lr))
        else:
            self._adamw(grads, lr)

    # Multi-tensor forms of torch's own updates; addcmul/addcdiv with the per-member factor inside
    # round as torch's scalar ``alpha``/``value`` forms do: each member's step is bit for bit its own
    # optimizer's on the CPU.

    def _sgd(self, grads: list[Tensor], neg_lr: _PerMember) -> None:
        # torch.optim.SGD: d = g + wd·p; buf = d (first step) else μ·buf + d; p -= lr·buf
        params = self.params
        if self._decays:
            torch._foreach_addcmul_(grads, params, self._weight_decay.each(params))
        if not self.state[0]:
            for state, d in zip(self.state, grads, strict=True):
                state["momentum_buffer"] = d.clone()
        else:
            bufs = [state["momentum_buffer"] for state in self.state]
            torch._foreach_mul_(bufs, self._momentum.each(params))
            torch._foreach_add_(bufs, grads)
        torch._foreach_addcmul_(
            params, [state["momentum_buffer"] for state in self.state], neg_lr.each(params)
        )

    def _adamw(self, grads: list[Tensor], lr: Tensor) -> None:
        # torch.optim.AdamW: p ·= 1 − lr·wd; m = lerp(m, g, 1 − β₁); v = β₂·v + (1 − β₂)·g²;
        # p −= lr / (1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)   (bias corrections in double, as torch)
        params, t = self.params, self.count
        if not self.state[0]:
            for state, p in zip(self.state, params, strict=True):
                state.update(exp_avg=torch.zeros_like(p), exp_avg_sq=torch.zeros_like(p))
        m = [state["exp_avg"] for state in self.state]
        v = [state["exp_avg_sq"] for state in self.state]
        if self._decays:  # a factor of exactly 1 otherwise
            torch._foreach_mul_(params, _PerMember(1 - lr * self.weight_decay).each(params))
        torch._foreach_lerp_(m, grads, _PerMember(1 - self.momentum).each(params))
        torch._foreach_mul_(v, BETA2)
        torch._foreach_addcmul_(v, grads, grads, value=1 - BETA2)
        denom = torch._foreach_sqrt(v)
        # rounded to the parameters' dtype here as the kernel would round it: one dtype for the multi-tensor call
        torch._foreach_div_(denom, ((1 - BETA2**t) ** 0.5).to(params[0].dtype))
        torch._foreach_add_(denom, self.eps)
        step_size = _PerMember(-lr / (1 - self.momentum**t))
        torch._foreach_addcdiv_(params, torch._foreach_mul(m, step_size.each(params)), denom)
