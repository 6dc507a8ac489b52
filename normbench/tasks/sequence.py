"""The sequence task: a recurrent net (:class:`normbench.tasks.recurrent.NormRNN`, ``task.model.arch=rnn``)
reads each input as a sequence of time steps and classifies it from its last state. It trains and is
measured as classification is (cross-entropy, arg-max error); its settings are
:class:`normbench.schema.RecurrentConfig`."""

from __future__ import annotations

from omegaconf import DictConfig
from torch import nn

from normbench.schema import ConfigError, RecurrentConfig
from normbench.tasks.classification import LogitsTask
from normbench.tasks.dataset import Dataset
from normbench.tasks.recurrent import CELLS, NormRNN
from normbench.tasks.registry import norm_layers, register_task


@register_task("sequence")
class Sequence(LogitsTask):
    archs = ("rnn",)
    options_type = RecurrentConfig

    def model_reads(self, arch: str) -> tuple[str, ...]:
        return ("width", "cell", "shared_stats", "embed", "norm_gain")  # one recurrent layer: no depth

    def check(self, cfg: DictConfig) -> None:
        cell = self.options(cfg).cell
        if cell not in CELLS:  # the model's own ValueError came after the data, blamed on the norm
            raise ConfigError(f"task.model.cell={cell}: not a recurrent cell; available: {', '.join(CELLS)}")

    def build_model(self, cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
        o: RecurrentConfig = self.options(cfg)
        norms = norm_layers(cfg)
        shape = data.input_shape  # (C, L): L steps of C features; (C, H, W) images: H rows of W pixels
        features, steps = (shape[2], shape[1]) if len(shape) == 3 else shape
        model = NormRNN(
            features, steps, o.width, data.num_classes, norms, o.cell, o.shared_stats, o.embed, o.norm_gain
        )
        return model, norms.built
