"""A run's identity: the resolved config without where/how keys, its hash, and the folder a run claims
(or skips, when a final record of the same config is there). No torch, no Hydra: the report reads it."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from contextlib import ExitStack
from functools import cache
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from normbench.results import (
    FINAL_STATUSES,
    RESULT_FILE,
    InvalidRecord,
    config_hash,
    identity_config,
    load_run,
    remove_stale_temporaries,
    run_lock,
)
from normbench.schema import NON_IDENTITY_KEYS, Config, ConfigError, later_keys

log = logging.getLogger(__name__)

# Keys added after records existed, left out of the identity while at this value: the earlier runs
# behaved exactly so, and keep their hashes. The schema's marks (normbench.schema.added) give them; a
# plugin's options are not in the schema (plugins import torch), so theirs are listed here.
PLUGIN_LATER_KEYS = {
    "norm.positions": 0,  # batchnorm pooled over positions, as before the option existed
    "norm.ramp_reference_steps": 0,  # batchrenorm's ramp in steps as given, as before the option existed
}
LATER_KEYS = {**later_keys(), **PLUGIN_LATER_KEYS}


def record_config(config: Mapping[str, Any]) -> DictConfig:
    """A record's ``config`` completed by today's schema. A key of :data:`LATER_KEYS` that the record
    leaves out was at its old value when the run trained (that is why it was left out), which is not
    always today's default (``data.val_size``: 0 before, 0.1 now), so it is restored to that value."""
    cfg = OmegaConf.merge(_schema(), config)  # merge copies the schema: the cached one stays as it is
    for key, before in LATER_KEYS.items():
        if not _has(config, key) and OmegaConf.select(cfg, key, default=None) is not None:
            OmegaConf.update(cfg, key, before, merge=False)
    return cfg


@cache
def _schema() -> DictConfig:
    """Today's schema with its defaults, built once (a third of the time of completing a record)."""
    return OmegaConf.structured(Config)


def _has(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def run_identity(cfg: DictConfig) -> tuple[dict[str, Any], str]:
    """The resolved config that defines the run and its hash. The same config on several torchrun
    processes is a different experiment, so their number joins the identity."""
    identity = identity_config(cfg, NON_IDENTITY_KEYS, LATER_KEYS)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1:
        identity["world_size"] = world_size
    return identity, config_hash(identity)


def previous_result(out_dir: Path, digest: str) -> dict[str, Any] | None:
    """The record in ``out_dir`` if it is a final result (completed/diverged) of the same config."""
    try:
        record = load_run(out_dir / RESULT_FILE)
    except InvalidRecord:
        return None
    if record["config_hash"] == digest and record["status"] in FINAL_STATUSES:
        return record
    return None


def check_folder(cfg: DictConfig, out_dir: Path) -> None:
    """ConfigError where ``out_dir`` holds the record, or the checkpoint of a killed run, of another
    config, which training ``cfg`` there would replace (two single runs given one ``hydra.run.dir``, or
    started in the same second), unless ``runtime.force``."""
    from normbench.checkpoint import CHECKPOINT_FILE, saved_config_hash  # torch, where a run trains

    if cfg.runtime.force:
        return
    digest = run_identity(cfg)[1]
    try:
        record = load_run(out_dir / RESULT_FILE)
    except InvalidRecord:  # none, or no record: a killed run's checkpoint is all there may be to keep
        saved = saved_config_hash(out_dir / CHECKPOINT_FILE)
        if saved is not None and saved != digest:
            raise ConfigError(
                f"{out_dir}: holds the checkpoint of another run (config {saved}), which this one would "
                "replace; give this run a folder of its own (hydra.run.dir), or runtime.force=true to "
                "replace it"
            ) from None
        return
    if record["config_hash"] == digest:
        return
    config = record["config"]
    raise ConfigError(
        f"{out_dir}: holds the record of another run (config {record['config_hash']}: "
        f"task={config['task']['name']} norm={config['norm']['name']} batch_size={config['batch_size']} "
        f"seed={config['seed']}), which this one would replace; give this run a folder of its own "
        "(hydra.run.dir), or runtime.force=true to replace it"
    )


def claim_folder(cfg: DictConfig, out_dir: Path, locks: ExitStack, lock: bool = True) -> str | None:
    """Take ``out_dir`` to train the run ``cfg`` in: None when it is this process's to train (its run
    lock now held on ``locks``, stale temporaries removed), otherwise why not: ``skipped`` (a final
    result of this config is there, unless ``runtime.force``) or ``running_elsewhere`` (another live
    process holds the lock). ``lock=False`` (torchrun, where every process trains the same folder)
    checks for a result only."""
    digest = run_identity(cfg)[1]
    if not cfg.runtime.force and previous_result(out_dir, digest) is not None:
        log.info("skipped: %s already holds a result of this config", out_dir)
        remove_stale_temporaries(out_dir, held=False)
        return "skipped"
    if not lock:
        return None
    if not locks.enter_context(run_lock(out_dir)):
        log.warning("skipped: another live process is training %s", out_dir)
        return "running_elsewhere"
    if not cfg.runtime.force and previous_result(out_dir, digest) is not None:
        return "skipped"  # finished by the process that held the lock a moment ago
    remove_stale_temporaries(out_dir)
    return None
