"""The GAN task (``task.model.arch=gan``, settings :class:`normbench.schema.GanConfig`): a DCGAN whose
generator and discriminator norms come from the registry (:mod:`normbench.tasks.gan`), trained by its
own adversarial loop (:func:`normbench.train_gan.train_gan`; in a population,
:func:`normbench.population.adversarial.train_gan_population`) and measured by the Fréchet distance of
what it generates."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig
from torch import nn

from normbench.norms import available_norms, norm_spec
from normbench.schema import ConfigError, GanConfig
from normbench.tasks.dataset import Dataset
from normbench.tasks.gan import GAN
from normbench.tasks.models import ModelConfigError
from normbench.tasks.registry import Task, norm_layers, register_task, untrainable_norm

if TYPE_CHECKING:
    from normbench.experiment.record import RunRecord
    from normbench.runtime import Runtime


@register_task("gan")
class Adversarial(Task):
    archs = ("gan",)
    options_type = GanConfig
    own_training = True
    population_training = True

    def model_reads(self, arch: str) -> tuple[str, ...]:
        return ("width", "latent", "g_norm", "d_norm", "d_batches")  # no depth: the image size sets it

    def check(self, cfg: DictConfig) -> None:
        super().check(cfg)
        o: GanConfig = self.options(cfg)
        for key, name in (("g_norm", o.g_norm), ("d_norm", o.d_norm)):
            with contextlib.suppress(KeyError):  # an unknown name: build_model says so
                problem = name and untrainable_norm(f"task.model.{key}", name)
                if problem:
                    raise ConfigError(problem)
        if cfg.runtime.precision == "fp16":
            raise ConfigError(
                f"runtime.precision=fp16: task={cfg.task.name} has no gradient scaler for its two networks; "
                "use bf16 or fp32"
            )

    def metric_names(self, cfg: DictConfig) -> frozenset[str]:
        """What every completed run records (:func:`normbench.train_gan.finish_gan`; besides these,
        the flag ``mode_collapsed`` and, for a batch-dependent generator norm, ``fd_batch_stats``)."""
        return frozenset(
            {
                "fd",
                "fd_real",
                "fd_classifier_test_error",
                "class_share_max",
                "classes_covered",
                "d_loss",
                "g_loss",
            }
        )

    def why_not_population(self, cfg: DictConfig) -> str | None:
        if cfg.train.checkpoint_every:
            return (
                f"train.checkpoint_every={cfg.train.checkpoint_every}: GAN populations do not checkpoint yet"
            )
        return None

    def build_model(self, cfg: DictConfig, data: Dataset) -> tuple[nn.Module, list[nn.Module]]:
        """Each network's norm is ``task.model.g_norm`` / ``d_norm`` ("" = the run's norm), with the run's
        norm options where it is the run's norm and the plugin's defaults otherwise."""
        o: GanConfig = self.options(cfg)
        nets = {}
        for key, name in (("g_norm", o.g_norm), ("d_norm", o.d_norm)):
            try:
                norm_spec(name or cfg.norm.name)
            except KeyError:
                raise ModelConfigError(
                    f"task.model.{key}={name}: not a registered norm; available: {', '.join(available_norms())}"
                ) from None
            nets[key] = norm_layers(cfg, name)
        gan = GAN(data.input_shape, o.latent, o.width, nets["g_norm"], nets["d_norm"])
        return gan, nets["g_norm"].built + nets["d_norm"].built

    def train(
        self,
        cfg: DictConfig,
        record: RunRecord,
        data: Dataset,
        model: nn.Module,
        runtime: Runtime,
        out_dir: Path,
        progress: bool,
    ) -> None:
        from normbench.train_gan import train_gan

        train_gan(cfg, record, data, model, runtime, out_dir, progress)

    def train_population(
        self,
        cfgs: Sequence[DictConfig],
        records: Sequence[RunRecord],
        data: Dataset,
        models: Sequence[nn.Module],
        runtime: Runtime,
        out_dirs: Sequence[Path],
        progress: bool,
        form: str,
    ) -> str:
        from normbench.population.adversarial import train_gan_population

        return train_gan_population(cfgs, records, data, models, runtime, out_dirs, progress, form)
