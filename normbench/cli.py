"""Command-line entry points: ``normbench-run`` (a Hydra app) and ``normbench-report``."""

from __future__ import annotations

import logging
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from normbench.config import NON_IDENTITY_KEYS, register_configs
from normbench.run import ConfigError, execute, previous_result, run_identity
from normbench.sweep import mark_visit

log = logging.getLogger("normbench")

_PACKAGED = Path(__file__).parent / "conf"  # a regular install ships conf/ inside the package
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parents[1] / "conf"


def _hash_resolver(*, _root_: DictConfig) -> str:
    """``${normbench_hash:}``: the run's config hash, used to name its sweep sub-folder."""
    return run_identity(_root_)[1]


if not OmegaConf.has_resolver("normbench_hash"):
    OmegaConf.register_new_resolver("normbench_hash", _hash_resolver)
register_configs()


def swept_choices(cfg: DictConfig, overrides: list[str]) -> dict[str, Any]:
    """The values the command line set, by key (a config-group choice by its ``name``)."""
    choices: dict[str, Any] = {}
    for item in overrides:
        key = item.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in NON_IDENTITY_KEYS or key.startswith("hydra/"):
            continue
        raw = item.split("=", 1)[-1]
        value = OmegaConf.select(cfg, key.replace("/", "."), default=raw)  # e.g. experiment=...: no key
        if isinstance(value, DictConfig):
            value = value.get("name", raw)
        elif isinstance(value, Enum):
            value = value.value
        choices[key] = value
    return choices


def cap_threads_for_parallel_jobs(cfg: DictConfig, hc: Any) -> None:
    """Under the joblib launcher, keep jobs × torch threads within the machine's cores."""
    n_jobs = OmegaConf.select(hc, "launcher.n_jobs", default=None)
    if n_jobs is None or "joblib" not in str(OmegaConf.select(hc, "launcher._target_", default="")):
        return
    cores = os.cpu_count() or 1
    n_jobs = cores if n_jobs < 0 else n_jobs
    cap = max(1, cores // max(1, n_jobs))
    if cfg.runtime.threads > cap:
        log.warning(
            "runtime.threads=%d with %d parallel jobs on %d cores: using %d",
            cfg.runtime.threads,
            n_jobs,
            cores,
            cap,
        )
        cfg.runtime.threads = cap


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> None:
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    log_file = str(out_dir / f"{hc.job.name}.log")
    _, digest = run_identity(cfg)
    if not cfg.runtime.force:
        previous = previous_result(out_dir, digest)
        if previous is not None:
            log.info("skipped: %s already holds a %s result of this config", out_dir, previous["status"])
            mark_visit(out_dir, "skipped", log_file)
            return
    cap_threads_for_parallel_jobs(cfg, hc)
    progress = cfg.runtime.progress and sys.stderr.isatty() and not multirun
    try:
        record = execute(cfg, out_dir, swept_choices(cfg, list(hc.overrides.task)), progress)
    except ConfigError as exc:
        if multirun:  # sys.exit here would abort the whole sweep: SweepSummary exits non-zero at the end
            log.error("configuration error: %s", exc)
            mark_visit(out_dir, "config_error", log_file, error=str(exc))
            return
        print(f"normbench-run: error: {exc}", file=sys.stderr)
        sys.exit(2)
    mark_visit(out_dir, record["status"], log_file)
    metrics = record["metrics"]
    log.info(
        "%s: test_error %s, %d steps, result in %s",
        record["status"],
        f"{metrics['test_error']:.4f}" if "test_error" in metrics else "n/a",
        record["steps"],
        out_dir,
    )


def run() -> None:
    """``normbench-run``: train one run (or a sweep with ``-m``)."""
    _main()


def report(argv: list[str] | None = None) -> None:
    """``normbench-report SWEEP_DIR [SWEEP_DIR ...] --out DIR``."""
    from normbench.report.cli import main

    main(argv)
