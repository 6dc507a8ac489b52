"""A recurrent classifier whose gate pre-activations are normalized through the registry at every step.

Placement, as in Layer-Normalized LSTM (Ba, Kiros & Hinton 2016) and Recurrent Batch Normalization
(Cooijmans et al. 2017): the input and recurrent contributions to the gates are normalized separately,

    LSTM:  (i, f, o, g) = N_x(W_x x_t) + N_h(W_h h_{t-1}) + b
           c_t = σ(f) ⊙ c_{t-1} + σ(i) ⊙ tanh(g),   h_t = σ(o) ⊙ tanh(N_c(c_t))
    GRU:   (r, z) = N_x(W_x x_t)[:2H] + N_h(W_h h_{t-1})[:2H] + b,
           n = tanh(N_x(W_x x_t)[2H:] + b_n + σ(r) ⊙ N_h(W_h h_{t-1})[2H:]),   h_t = (1 − σ(z)) ⊙ n + σ(z) ⊙ h_{t-1}

each N a registry norm on (N, features) tensors. With ``embed=E`` each step's input is first mapped to E
features, x_t -> tanh(W_e x_t + b_e): a scalar input then reaches N_x through a non-linear map, so
normalizing W_x x_t over its units no longer reduces it to sign(x_t) (what LayerNorm does to the
projection of one value). ``norm_gain`` is the initial γ of every recurrent norm (Cooijmans et al. 2017
start BatchNorm's at 0.1, keeping the gates away from saturation). A norm that keeps running statistics gets one module
per time step (its own statistics, Cooijmans et al.) whose affine parameters are shared across steps;
evaluated on a sequence longer than any seen in training, the steps beyond use the last step's
statistics. ``shared_stats=True`` uses one module for every step. Norms without running statistics
(LayerNorm, RMSNorm) are one module per position N_x, N_h, N_c. The classifier reads the last hidden
state; the head has no norm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from normbench.tasks.norm_layers import NormLayers

CELLS = {"lstm": 4, "gru": 3}  # gates per cell


class StepNorms(nn.Module):
    """The norm of one position (input, recurrent or cell) at every time step: per-step modules with
    shared affine parameters, or one module."""

    population_form = "wide"  # forward only picks a child: a wide population widens each step's norm

    def __init__(self, norms: NormLayers, features: int, steps: int, per_step: bool):
        super().__init__()
        first = norms(features)
        self.steps = nn.ModuleList([first])
        if per_step:
            for _ in range(steps - 1):
                twin = norms(features)
                for name, param in first.named_parameters(recurse=False):
                    setattr(twin, name, param)  # one γ/β for all steps (Cooijmans et al. 2017)
                self.steps.append(twin)

    def forward(self, x: Tensor, t: int) -> Tensor:
        if len(x) == 1:
            # a step's slice of the input projections is strided, and at batch size 1 under vmap (a
            # population of online learners) ``contiguous()`` sees nothing to do while torch's group_norm
            # (LayerNorm's kernel) refuses the strided memory; a copy gives it contiguous memory
            x = x.clone(memory_format=torch.contiguous_format)
        return self.steps[min(t, len(self.steps) - 1)](x)


class NormRNN(nn.Module):
    """LSTM or GRU classifier over (N, C, L) inputs read as L steps of C features (see module docstring).

    As a wide population (:mod:`normbench.population.wide`) ``members`` = K copies run as one model:
    member k's input channels, gates, hidden and cell units are the k-th block of each feature
    dimension, so the gates are split per member and every other operation is per feature."""

    population_form = "wide"
    members = 1

    def __init__(
        self,
        features: int,
        steps: int,
        hidden: int,
        num_classes: int,
        norms: NormLayers,
        cell: str = "lstm",
        shared_stats: bool = False,
        embed: int = 0,
        norm_gain: float = 1.0,
    ):
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; available: {', '.join(CELLS)}")
        self.cell, self.hidden = cell, hidden
        gates = CELLS[cell] * hidden
        per_step = norms.spec.running_stats and not shared_stats
        self.embed = nn.Sequential(nn.Linear(features, embed), nn.Tanh()) if embed else nn.Identity()
        self.w_x = nn.Linear(embed or features, gates, bias=False)
        self.w_h = nn.Linear(hidden, gates, bias=False)
        self.bias = nn.Parameter(torch.zeros(gates))
        self.norm_x = StepNorms(norms, gates, steps, per_step)
        self.norm_h = StepNorms(norms, gates, steps, per_step)
        self.norm_c = StepNorms(norms, hidden, steps, per_step) if cell == "lstm" else None
        self.head = nn.Linear(hidden, num_classes)
        if cell == "lstm":
            with torch.no_grad():
                self.bias[hidden : 2 * hidden].fill_(1.0)  # forget-gate bias 1 (Jozefowicz et al. 2015)
        if norm_gain != 1.0:
            with torch.no_grad():
                for position in (self.norm_x, self.norm_h, self.norm_c):
                    weight = getattr(position.steps[0], "weight", None) if position is not None else None
                    if isinstance(weight, nn.Parameter):  # shared by every step's module
                        weight.fill_(norm_gain)

    def forward(self, x: Tensor) -> Tensor:
        m, hidden = self.members, self.hidden
        # (N, C, L) signals as L steps of C features; (N, 1, rows, cols) images row by row (a wide
        # population's (N, K, rows, cols) as K blocks of cols features)
        sequence = x.transpose(-1, -2).flatten(1, 2) if x.dim() == 4 else x
        n, steps = sequence.shape[0], sequence.shape[-1]
        h = sequence.new_zeros(n, m * hidden)
        c = sequence.new_zeros(n, m, hidden)
        # all steps' input projections in one matmul, rows time-major so that each step's slice is
        # contiguous (BatchNorm's CPU kernel takes ~7x longer on a strided (N, C) slice); unbind (not
        # indexing) so that the backward stacks the steps' gradients once instead of scattering each
        # into a full-size zero tensor
        projected = self.w_x(self.embed(sequence.permute(2, 0, 1).flatten(0, 1)))
        inputs = projected.view(steps, n, -1).unbind(0)
        bias = self.bias.view(m, -1, hidden)  # (members, gates, units)
        for t in range(len(inputs)):
            gx, gh = self.norm_x(inputs[t], t), self.norm_h(self.w_h(h), t)
            if self.cell == "lstm":
                i, f, o, g = (gx + gh + self.bias).view(n, m, 4, hidden).unbind(2)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                cell = self.norm_c(c.reshape(n, m * hidden), t).view(n, m, hidden)
                h = (torch.sigmoid(o) * torch.tanh(cell)).reshape(n, m * hidden)
            else:
                gx, gh = gx.view(n, m, 3, hidden), gh.view(n, m, 3, hidden)
                r, z = (gx[:, :, :2] + gh[:, :, :2] + bias[:, :2]).unbind(2)
                candidate = torch.tanh(gx[:, :, 2] + bias[:, 2] + torch.sigmoid(r) * gh[:, :, 2])
                z = torch.sigmoid(z)
                h = ((1 - z) * candidate + z * h.view(n, m, hidden)).reshape(n, m * hidden)
        return self.head(h)
