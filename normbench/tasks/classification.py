"""The classification task: a model maps a batch of inputs to class logits; it trains on the mean
cross-entropy and a sample's error is whether its arg-max class is wrong.

Architectures (``task.model.arch``, settings :class:`normbench.schema.ClassifierConfig`): mlp, cnn1d,
cnn2d, resnet2d, cifar_resnet, transformer and torchvision (:mod:`normbench.tasks.models`)."""

from __future__ import annotations

import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from normbench.schema import ClassifierConfig, ConfigError
from normbench.tasks.dataset import Dataset
from normbench.tasks.models import CLASSIFIERS, ModelConfigError, build_classifier
from normbench.tasks.registry import Task, norm_layers, register_task


class LogitsTask(Task):
    """A task whose model returns class logits (N, classes): cross-entropy and arg-max error."""

    def loss(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs, labels)

    def sample_losses(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(outputs, labels, reduction="none")

    def sample_errors(self, outputs: Tensor, inputs: Tensor, labels: Tensor) -> Tensor:
        return outputs.argmax(-1) != labels


LOGITS = LogitsTask()  # the measure of a model that returns class logits, whatever its task


@register_task("classification")
class Classification(LogitsTask):
    archs = tuple(CLASSIFIERS)
    options_type = ClassifierConfig

    def model_reads(self, arch: str) -> tuple[str, ...]:
        return CLASSIFIERS[arch].reads

    def check(self, cfg: DictConfig) -> None:
        """The arch's settings, before any data loads (a torchvision model's name, a transformer's heads)."""
        settings = self.options(cfg)
        try:
            CLASSIFIERS[settings.arch].check(settings)
        except ModelConfigError as exc:
            raise ConfigError(str(exc)) from None

    def build_model(self, cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
        norms = norm_layers(cfg)
        return build_classifier(self.options(cfg), data.input_shape, data.num_classes, norms), norms.built

    def why_not_population(self, cfg: DictConfig) -> str | None:
        if cfg.task.model.arch == "torchvision":  # converted torchvision models hold norms of any shape
            return f"task={cfg.task.name}: arch=torchvision has no population path"
        return None
