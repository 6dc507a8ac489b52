"""An autoencoder task: each input is reconstructed through a narrow code, and a sample's error and loss
are its mean squared reconstruction error.

The model is ``Flatten → [Linear → norm → ReLU] → Linear(code) → [Linear → norm → ReLU] → Linear``
(the reconstruction, flat) with ``task.model.width`` hidden units and the run's norm from normbench's registry, so
every norm plugin, sweep, population (one wide model: every part has a wide form) and report works
on it. Its own setting, ``task.options.code``,
is read into :class:`AutoencoderOptions`; its own metric, ``test_snr_db``, joins the record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from normbench.config import ConfigError
from normbench.tasks.registry import Task, norm_layers, register_task, shared_metrics


@dataclass
class AutoencoderOptions:
    code: int = 8  # width of the bottleneck


@register_task("autoencoder")
class Autoencoder(Task):
    archs = ("autoencoder",)
    options_type = AutoencoderOptions
    error_is_fraction = False  # squared errors: any value >= 0

    def check(self, cfg) -> None:
        """Refuse a setting before any data loads (the base reads the options: an unknown one is refused)."""
        super().check(cfg)
        if self.options(cfg).code < 1:
            raise ConfigError(f"task.options.code={self.options(cfg).code}: must be an integer >= 1")

    def build_model(self, cfg, data) -> tuple[nn.Module, list[nn.Module]]:
        options: AutoencoderOptions = self.options(cfg)
        norms = norm_layers(cfg)
        size, width = math.prod(data.input_shape), cfg.task.model.width
        model = nn.Sequential(
            nn.Flatten(),
            *norms.block(nn.Linear(size, width), width),
            nn.Linear(width, options.code),
            *norms.block(nn.Linear(options.code, width), width),
            nn.Linear(width, size),
        )
        return model, norms.built

    def sample_losses(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        """The mean squared error of each sample's reconstruction (outputs are flat: (N, C·L))."""
        return (outputs - inputs.flatten(1)).pow(2).mean(1)

    def sample_errors(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        return self.sample_losses(outputs, inputs, labels)

    def metric_names(self, cfg) -> frozenset[str]:
        """Every run's metrics, which ``task.metric`` may name: the shared ones and its own."""
        return shared_metrics(cfg) | {"test_snr_db"}

    def metrics(self, model: nn.Module, data) -> dict[str, float]:
        """``test_snr_db``: the test set's signal-to-noise ratio of the reconstructions, in dB
        (10 log10 of the signals' mean square over the mean squared error)."""
        x = data.x_test.flatten(1)
        error = (model(data.x_test) - x).pow(2).mean()
        return {"test_snr_db": float(10 * torch.log10(x.pow(2).mean() / error))}
