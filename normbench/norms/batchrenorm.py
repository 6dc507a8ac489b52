"""Batch Renormalization (Ioffe 2017)."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from normbench.norms._stats import group_moments, group_view
from normbench.norms.batchnorm import BatchNorm
from normbench.norms.registry import register_norm

log = logging.getLogger(__name__)
_told: set[tuple[int, int]] = set()  # (warm-up, run length) pairs already warned of in this process


@register_norm(
    "batchrenorm",
    aliases=("brn",),
    paper="Ioffe 2017, Batch Renormalization, arXiv:1702.03275",
    batch_dependent=True,
    running_stats=True,
    population="wide",
)
class BatchRenorm(BatchNorm):
    r"""Batch Renormalization: BatchNorm corrected towards the running statistics by r and d.

    .. math::
        y = \left(\frac{x - \mu_B}{\sigma_B} \cdot r + d\right) \gamma + \beta,\quad
        r = \mathrm{sg}\!\left(\mathrm{clip}_{[1/r_{max}, r_{max}]}\frac{\sigma_B}{\sigma}\right),\quad
        d = \mathrm{sg}\!\left(\mathrm{clip}_{[-d_{max}, d_{max}]}\frac{\mu_B - \mu}{\sigma}\right)

    with :math:`\sigma_B = \sqrt{\mathrm{Var}_B[x] + \epsilon}` (biased batch variance),
    :math:`\sigma = \sqrt{\text{running\_var} + \epsilon}`, ``sg`` = stop-gradient. The running
    statistics are updated like BatchNorm's (``momentum``; the paper uses 0.01 for long ImageNet runs,
    the default 0.1 suits short runs). The paper's schedule, driven by the number of training steps
    seen (``num_batches_tracked``): plain BatchNorm (r_max = 1, d_max = 0) for ``warmup_steps``, then
    r_max rises linearly to ``r_max`` by ``r_max_steps`` and d_max to ``d_max`` by ``d_max_steps``
    (paper: 5k, 40k, 25k steps, r_max 3, d_max 5). With r_max = 1 and d_max = 0 it equals BatchNorm.
    Eval mode uses the running statistics.

    A run shorter than the warm-up is BatchNorm throughout (a warning says so when the run's length is
    given). ``ramp_reference_steps`` = N > 0 says the three steps describe a run of N steps and scales
    them to the run's own length, given by :meth:`set_training_steps` (``normbench-run`` calls it when
    it builds the model): with N = 40000, a 4,000-step run plays the paper's ramp at a tenth of its
    steps.

    Shape:
        Input (N, C, *) with 0-3 spatial dims; output the same shape.
    """

    def __init__(
        self,
        num_channels: int,
        r_max: float = 3.0,
        d_max: float = 5.0,
        warmup_steps: int = 5000,
        r_max_steps: int = 40000,
        d_max_steps: int = 25000,
        ramp_reference_steps: int = 0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
    ) -> None:
        super().__init__(num_channels, eps, momentum, affine, track_running_stats=True)
        if r_max < 1 or d_max < 0:
            raise ValueError(f"BatchRenorm: need r_max >= 1 and d_max >= 0, got r_max={r_max}, d_max={d_max}")
        if ramp_reference_steps < 0:
            raise ValueError(
                f"BatchRenorm: ramp_reference_steps must be 0 (steps as given) or a run's length in steps, "
                f"got {ramp_reference_steps}"
            )
        self.r_max, self.d_max = r_max, d_max
        self.warmup_steps, self.r_max_steps, self.d_max_steps = warmup_steps, r_max_steps, d_max_steps
        self.ramp_reference_steps = ramp_reference_steps
        self._given_steps = (warmup_steps, r_max_steps, d_max_steps)
        self._awaits_length = ramp_reference_steps > 0
        self._schedules: dict[tuple, Tensor] = {}

    def set_training_steps(self, total: int) -> None:
        """The run's length in steps: with ``ramp_reference_steps`` = N > 0 the warm-up and ramp end steps
        become the given ones times ``total / N`` (rounded); otherwise nothing changes. A warm-up that
        outlasts the run (so that it trains as BatchNorm) is logged as a warning, once per setting."""
        if self.ramp_reference_steps:
            scale = total / self.ramp_reference_steps
            self.warmup_steps, self.r_max_steps, self.d_max_steps = (
                round(s * scale) for s in self._given_steps
            )
            self._awaits_length = False
        if self.warmup_steps >= total and (self.warmup_steps, total) not in _told:
            _told.add((self.warmup_steps, total))
            log.warning(
                "BatchRenorm: its warm-up (warmup_steps=%d) outlasts the run's %d training steps, so it "
                "trains as BatchNorm (r_max 1, d_max 0 throughout); norm.ramp_reference_steps scales its "
                "ramp to the run's length",
                self.warmup_steps,
                total,
            )

    def limits(self) -> Tensor:
        """(r_max, d_max) in force at the current step, a (2,) tensor computed on the step counter's
        device (no training step waits for the GPU to read it): each is its initial value (1, 0) before
        ``warmup_steps``, its final value from its end step on and linear in between."""
        offset, span, initial, rise = self.schedule().view(4, 2)
        return torch.addcmul(initial, rise, ((self.num_batches_tracked + offset) / span).clamp_(0, 1))

    def schedule(self) -> Tensor:
        """The ramps of r_max and d_max as (offset, span, initial, rise), four pairs in one (8,) tensor:
        progress = clamp((step + offset) / span, 0, 1), limit = initial + rise · progress; an end step at
        or before the warm-up's end makes progress a step function (clamp(step − warmup + 1, 0, 1)). Built
        once per setting, device and dtype (on a GPU's small shapes each small op costs host time)."""
        key = (self.warmup_steps, self.r_max_steps, self.d_max_steps, self.r_max, self.d_max)
        key += (self.running_var.device, self.running_var.dtype)
        if key not in self._schedules or torch.compiler.is_compiling():
            start = self.warmup_steps
            ramps = ((self.r_max_steps, self.r_max - 1.0), (self.d_max_steps, self.d_max))  # (end, rise)
            offset = [-start if end > start else 1 - start for end, _ in ramps]
            span = [end - start if end > start else 1 for end, _ in ramps]
            rows = [*offset, *span, 1.0, 0.0, *(rise for _, rise in ramps)]
            schedule = torch.tensor(rows, dtype=self.running_var.dtype, device=self.running_var.device)
            if torch.compiler.is_compiling():
                return schedule
            self._schedules = {key: schedule}  # one setting at a time: an edited attribute replaces it
        return self._schedules[key]

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return super().forward(x)
        self.check_input(x)
        if self._awaits_length:  # its ramp would silently be the unscaled one
            raise ValueError(
                f"BatchRenorm: ramp_reference_steps={self.ramp_reference_steps} scales the ramp to the run's "
                "length: call set_training_steps(total_steps) before training (normbench-run does)"
            )
        if x.numel() == 0:
            return self.empty_output(x)
        if (y := self.accelerated(x)) is not None:
            return y
        r_max, d_max = self.limits()
        with torch.no_grad():
            mean_b, var_b = (m.flatten() for m in group_moments(group_view(x, samples=x.shape[0])))
            sigma_b = torch.sqrt(var_b + self.eps)
            sigma = torch.sqrt(self.running_var + self.eps)
            r = torch.clamp(sigma_b / sigma, 1 / r_max, r_max)
            d = torch.clamp((mean_b - self.running_mean) / sigma, -d_max, d_max)
        self.track(mean_b, var_b, x.numel() / x.shape[1])
        weight = r if self.weight is None else self.weight * r
        bias = d if self.weight is None else self.weight * d
        if self.bias is not None:
            bias = bias + self.bias
        # one native kernel: (x - mu_B) / sigma_B * (r * gamma) + (d * gamma + beta)
        return F.batch_norm(x, None, None, weight, bias, True, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}, warmup_steps={self.warmup_steps}"
