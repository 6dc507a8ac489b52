"""``hydra/launcher=population``: a Hydra launcher that trains the jobs of a multirun as populations.

It composes every job as Hydra's basic launcher does (each job gets its config-hash folder, its
``.hydra/`` files and its log; the configs through :class:`~normbench.population.sweep_configs.SweepComposer`,
which composes each set of group choices once), then, instead of one process per job, partitions the jobs into groups
(:func:`normbench.population.grouping.partition`) and trains each group as one population
(:func:`normbench.population.train.train_population`); runs that cannot join a population train on
their own, with a notice in the log. Groups run one after another, or ``n_jobs`` at a time in worker
processes (:func:`~normbench.population.grouping.spread`: with few groups, each is halved so that no
worker idles; the largest go first). Options: ``hydra.launcher.max_members`` (largest population, default 64),
``hydra.launcher.cache_mb`` (on the CPU, a group trains as populations small enough that the largest
output of a norm layer, for all their members together, stays within this many MiB, default 1.5; 0: one
population per group; see :func:`normbench.population.train.members_per_population`),
``hydra.launcher.n_jobs`` (parallel groups, default 1), ``hydra.launcher.form`` (``auto``: one wide model
where every part of the architecture has a wide form, else vmap; ``wide`` or ``vmap`` to insist; see
:mod:`normbench.population.wide`; each record's ``env.population_form`` says which trained it).

Resume and isolation are the single-run rules: a job whose folder holds a final result of its config
is skipped; every folder is locked (:func:`normbench.results.run_lock`) from enlistment until the
group's results are written, so no folder has two writers; each member writes its own
``result.json`` atomically and leaves its visit marker, which the ``normbench`` sweeper's summary
counts. With ``n_jobs > 1`` the process that trains a group holds its folders' locks: the launcher
hands them to the worker (a member whose folder another process took in between is left to it), and a
worker ends itself when the launcher's process is gone, so a killed sweep leaves no trainer behind
and a rerun never trains a run beside one.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.plugins.launcher import Launcher
from omegaconf import DictConfig, OmegaConf, open_dict

from normbench.config import ConfigError
from normbench.experiment.identity import check_folder, claim_folder
from normbench.experiment.run import check_run, execute, write_record
from normbench.population.grouping import member_values, partition, spread, why_not_population
from normbench.population.sweep_configs import SweepComposer
from normbench.population.wide import POPULATION_FORMS
from normbench.sweep import mark_visit

log = logging.getLogger(__name__)


@dataclass
class Member:
    """A job enlisted for training: its config (without ``hydra``), folder and log file."""

    cfg: DictConfig
    out_dir: Path
    log_file: str


class PopulationLauncher(Launcher):
    """Trains a multirun's jobs as populations (see the module docstring)."""

    def __init__(
        self, max_members: int = 64, n_jobs: int = 1, form: str = "auto", cache_mb: float = 1.5
    ) -> None:
        for key, value in (("max_members", max_members), ("n_jobs", n_jobs)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"hydra.launcher.{key}={value}: must be an integer >= 1")
        if form not in POPULATION_FORMS:
            raise ConfigError(f"hydra.launcher.form={form}: allowed are {', '.join(POPULATION_FORMS)}")
        if isinstance(cache_mb, bool) or not isinstance(cache_mb, int | float) or not cache_mb >= 0:
            raise ConfigError(f"hydra.launcher.cache_mb={cache_mb}: must be a number >= 0 (0: no limit)")
        self.max_members, self.n_jobs, self.form, self.cache_mb = max_members, n_jobs, form, float(cache_mb)
        self.config: DictConfig | None = None
        self.hydra_context: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        sweeper = str(OmegaConf.select(config, "hydra.sweeper._target_", default="") or "")
        if "optuna" in sweeper.lower():
            raise ConfigError(
                "hydra/launcher=population with hydra/sweeper=optuna: a trial's value is known only when "
                "its population ends; use hydra/launcher=basic or joblib for an Optuna search"
            )
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        assert self.config is not None
        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        returns: list[JobReturn] = []
        # every enlisted folder stays locked until its results are written (or its group is handed to a
        # worker process, which then holds it)
        self._held: dict[Path, ExitStack] = {}
        composer = SweepComposer(self.hydra_context.config_loader, self.config)
        with ExitStack() as locks:
            for i, overrides in enumerate(job_overrides):
                idx = initial_job_idx + i
                log.info("\t#%d : %s", idx, " ".join(filter_overrides(overrides)))
                cfg = composer.compose(overrides)
                with open_dict(cfg):
                    cfg.hydra.job.id = idx
                    cfg.hydra.job.num = idx
                returns.append(
                    run_job(
                        hydra_context=self.hydra_context,
                        task_function=lambda task_cfg: enlist(task_cfg, locks, self._held),
                        config=cfg,
                        job_dir_key="hydra.sweep.dir",
                        job_subdir_key="hydra.sweep.subdir",
                    )
                )
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
            members = [  # a job whose enlisting raised is FAILED: the sweeper reports its error
                r.return_value
                for r in returns
                if r.status == JobStatus.COMPLETED and isinstance(r.return_value, Member)
            ]
            parts = spread(partition([m.cfg for m in members], self.max_members), self.n_jobs)
            groups = [[members[i] for i in g] for g in parts]
            sizes = sorted(
                (len(g) for g in groups if len(g) > 1 and why_not_population(g[0].cfg) is None), reverse=True
            )
            log.info(
                "population launcher: %d runs, %d in %d population(s) %s, %d alone",
                len(members),
                sum(sizes),
                len(sizes),
                sizes,
                len(members) - sum(sizes),
            )
            self._train(groups)
        return returns

    def _train(self, groups: list[list[Member]]) -> None:
        if self.n_jobs == 1 or len(groups) == 1:
            for group in groups:
                train_group(group, self.form, self.cache_mb)
            return
        from joblib import Parallel, delayed

        cores = os.cpu_count() or 1
        for group in groups:  # jobs × torch threads within the machine's cores
            for m in group:
                m.cfg.runtime.threads = min(m.cfg.runtime.threads, max(1, cores // self.n_jobs))
                self._held.pop(m.out_dir).close()  # the worker that trains the group takes the lock
        parent = os.getpid()
        Parallel(n_jobs=self.n_jobs, backend="loky")(
            delayed(train_group_in_worker)(g, self.form, parent, self.cache_mb) for g in groups
        )


def enlist(cfg: DictConfig, locks: ExitStack, held: dict[Path, ExitStack]) -> Member | None:
    """Inside the job's Hydra context: the job as a member to train, or None when it is refused
    (configuration error), already finished, or held by another live process. The member's folder
    lock goes into ``held`` (and, to be released with them, into ``locks``)."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    log_file = str(out_dir / f"{hc.job.name}.log")
    try:
        check_run(cfg)
        check_folder(cfg, out_dir)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        mark_visit(out_dir, "config_error", log_file, error=str(exc))
        return None
    own = locks.enter_context(ExitStack())
    why = claim_folder(cfg, out_dir, own)
    if why is not None:
        if why == "skipped":
            mark_visit(out_dir, "skipped", log_file)
        return None
    held[out_dir] = own
    return Member(cfg, out_dir, log_file)


_WATCHED_PARENT: list[int] = []


def _exit_with(parent: int) -> None:
    """End this worker process (``os._exit``) within half a second of its launcher's process ending:
    a ``kill -9`` of the sweep must not leave it training, and writing, behind a rerun's back."""
    if _WATCHED_PARENT:  # a reused worker: its watch runs already
        return
    _WATCHED_PARENT.append(parent)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="normbench-parent-watch", daemon=True).start()


def train_group_in_worker(group: Sequence[Member], form: str, parent: int, cache_mb: float = 0.0) -> None:
    """:func:`train_group` in a worker process: it takes its members' folder locks itself (a member
    whose folder another process took meanwhile is left to it) and ends with the launcher's process."""
    _exit_with(parent)
    with ExitStack() as locks:
        mine = []
        for m in group:
            why = claim_folder(m.cfg, m.out_dir, locks)
            if why is None:
                mine.append(m)
            else:
                mark_visit(m.out_dir, why, m.log_file)
        if mine:
            train_group(mine, form, cache_mb)


def train_group(group: Sequence[Member], form: str = "auto", cache_mb: float = 0.0) -> None:
    """Train one group (a population, or one run alone) and leave each member's result and visit."""
    handlers = [logging.FileHandler(m.log_file) for m in group]
    root = logging.getLogger()
    level = root.level  # a joblib worker's root logger starts at WARNING: the members' logs need INFO
    root.setLevel(min(level, logging.INFO) if level else logging.INFO)
    for h in handlers:
        h.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(h)
    try:
        _train_group(group, form, cache_mb)
    finally:
        for h in handlers:
            root.removeHandler(h)
            h.close()
        root.setLevel(level)


def _train_group(group: Sequence[Member], form: str, cache_mb: float) -> None:
    from normbench.population.train import train_population

    first = group[0].cfg
    why = why_not_population(first)
    if len(group) == 1 or why is not None:
        if why is not None:
            log.warning("trained on its own, not in a population: %s", why)
        for m in group:
            _outcome(m, _separate(m))
        return
    values = [member_values(m.cfg) for m in group]
    varying = [k for k in values[0] if len({str(v[k]) for v in values}) > 1]
    log.info(
        "population of %d members (%s)",
        len(group),
        "; ".join(" ".join(f"{k}={v[k]}" for k in varying) for v in values) or "identical configs",
    )
    progress = bool(first.runtime.progress) and sys.stderr.isatty()
    try:
        records = train_population(
            [m.cfg for m in group], progress, form, [m.out_dir for m in group], cache_mb
        )
    except ConfigError as exc:
        for m in group:
            log.error("configuration error: %s", exc)
            mark_visit(m.out_dir, "config_error", m.log_file, error=str(exc))
        return
    for m, record in zip(group, records, strict=True):
        try:
            write_record(m.cfg, m.out_dir, record)
        except OSError as exc:
            record = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
        _outcome(m, record)


def _separate(m: Member) -> dict[str, Any]:
    try:
        return execute(m.cfg, m.out_dir)
    except ConfigError as exc:
        return {"status": "config_error", "error": str(exc)}


def _outcome(m: Member, record: dict[str, Any]) -> None:
    status, error = record["status"], record.get("error")
    (log.error if status in ("failed", "config_error") else log.info)(
        "%s: %s%s", status, m.out_dir, f" ({error})" if error else ""
    )
    mark_visit(m.out_dir, status, m.log_file, error=error)


@dataclass
class PopulationLauncherConf:
    _target_: str = "hydra_plugins.normbench_population_launcher.population_launcher.PopulationLauncher"
    max_members: int = 64
    n_jobs: int = 1
    form: str = "auto"
    cache_mb: float = 1.5


def register_launcher() -> None:
    ConfigStore.instance().store(group="hydra/launcher", name="population", node=PopulationLauncherConf)
