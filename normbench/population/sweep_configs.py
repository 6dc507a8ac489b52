"""Each job's config of a multirun, as Hydra's ``load_sweep_config`` composes it, at a fraction of the cost.

Hydra composes every job from scratch: it builds the defaults list from the config groups the job's
overrides choose, merges those files, then applies the job's value overrides (``batch_size=2``,
``optim.lr=0.1``) to the result. The first two steps take ~0.1 s per job and depend only on the group
choices, which a sweep over seeds, learning rates and batch sizes shares across most of its jobs; a
GPU study's thousands of jobs spent minutes there before anything trained.
:class:`SweepComposer` composes once per distinct set of group choices and applies each job's value
overrides to a copy with Hydra's own function, in Hydra's order, so the result is the config
``load_sweep_config`` gives (tests/test_sweep_configs.py compares them key by key, ``hydra`` node
included). Which overrides are value overrides is Hydra's rule too: not a config group, or a dict.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from hydra._internal.config_loader_impl import ConfigLoaderImpl, get_overrides_dirname
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from omegaconf import DictConfig, OmegaConf, open_dict


class SweepComposer:
    """``compose(overrides)`` returns ``config_loader.load_sweep_config(master, overrides)``."""

    def __init__(self, config_loader: Any, master: DictConfig) -> None:
        self.loader, self.master = config_loader, master
        self.parser = OverridesParser.create()
        hydra_overrides = list(OmegaConf.to_container(master.hydra.overrides.hydra))
        # the repository Hydra composes with: the search path as the master's overrides make it
        _, self.repo = config_loader._parse_overrides_and_create_caching_repo(
            master.hydra.job.config_name, hydra_overrides
        )
        self.bases: dict[tuple[str, ...], DictConfig] = {}

    def _is_value(self, override: Override) -> bool:
        if override.is_hydra_override():
            return False  # hydra.* may change the search path or the launcher: composed in full
        return isinstance(override.value(), dict) or not self.repo.group_exists(override.key_or_group)

    def compose(self, overrides: Sequence[str]) -> DictConfig:
        parsed = self.parser.parse_overrides(list(overrides))
        is_value = [self._is_value(o) for o in parsed]
        values = [o for o, value in zip(parsed, is_value, strict=True) if value]
        groups = tuple(o.input_line for o, value in zip(parsed, is_value, strict=True) if not value)
        if groups not in self.bases:
            self.bases[groups] = self.loader.load_sweep_config(self.master, list(groups))
        cfg = copy.deepcopy(self.bases[groups])
        OmegaConf.copy_cache(from_config=self.master, to_config=cfg)
        ConfigLoaderImpl._apply_overrides_to_config(values, cfg)
        task = [o for o in parsed if not o.is_hydra_override()]
        with open_dict(cfg.hydra):
            cfg.hydra.overrides.task = [o.input_line for o in task]
            dirname = cfg.hydra.job.config.override_dirname
            cfg.hydra.job.override_dirname = get_overrides_dirname(
                overrides=task,
                kv_sep=dirname.kv_sep,
                item_sep=dirname.item_sep,
                exclude_keys=dirname.exclude_keys,
            )
        return cfg
