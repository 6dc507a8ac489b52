"""Sweeps: the ``normbench`` Hydra sweeper (resume, up-front checks, the end summary) and the per-job
visit marker it reads.

The sweeper is Hydra's basic sweeper with three additions. It composes every job's config before
anything runs, so a bad value anywhere in the grid stops the sweep with one line and nothing written.
It skips jobs whose folder already holds a completed or diverged result of the same config, without
launching them (a finished sweep resumes in seconds). And whatever the jobs do — fail, crash their
worker, or find their run held by another live sweep — it writes the end summary to the terminal and
to ``summary.txt``, and exits non-zero when any job failed or did not finish.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import ConfigCompositionException
from hydra.experimental.callback import Callback
from hydra.plugins.sweeper import Sweeper
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from normbench.config import ConfigError, check_values
from normbench.experiment.identity import previous_result, run_identity
from normbench.results import (
    is_locked,
    read_json_file,
    remove_stale_temporaries,
    write_json_atomic,
    write_text_atomic,
)
from normbench.schema import is_finite_number

log = logging.getLogger(__name__)

VISIT_FILE = "visit.json"
# What one invocation did with a job; the first five always appear in the summary line.
OUTCOMES = (
    "completed",
    "diverged",
    "failed",
    "skipped",
    "config_error",
    "running_elsewhere",
    "unfinished",
    "interrupted",
    "repeated",  # a grid point whose config an earlier one of the same grid has (seed=0,0)
)
BAD_OUTCOMES = ("failed", "config_error", "unfinished", "interrupted")
HASH_SUBDIR = "${normbench_hash:}"  # conf/config.yaml: job folders named by the config hash


# Which sweep a job belongs to: set by the sweeper before it launches anything; jobs (in its process or
# in the worker processes it starts) stamp their visit markers with it, so that two sweeps sharing a
# folder each count only their own jobs' visits.
SWEEP_TOKEN = "NORMBENCH_SWEEP_TOKEN"


def mark_visit(out_dir: Path, outcome: str, log_file: str | None = None, error: str | None = None) -> None:
    """Record what this invocation did with a job folder (read by :class:`ResumingSweeper`)."""
    visit = {"outcome": outcome, "time": time.time(), "log": log_file, "error": error}
    try:
        write_json_atomic(out_dir / VISIT_FILE, {**visit, "sweep": os.environ.get(SWEEP_TOKEN)})
    except OSError as exc:  # a full or read-only disk: the run's own result is what counts
        log.error("could not write %s (%s): %s", out_dir / VISIT_FILE, outcome, exc.strerror or exc)


def read_visit(folder: Path, since: float, sweep: str | None = None) -> dict[str, Any] | None:
    """The visit marker a job of the sweep ``sweep`` left in ``folder`` at or after ``since`` (None if
    there is none: another sweep's visit is none of this one's)."""
    try:
        visit = read_json_file(folder / VISIT_FILE)
    except ValueError:
        return None
    if not isinstance(visit, dict) or visit.get("outcome") not in OUTCOMES:
        return None
    if sweep is not None and visit.get("sweep") != sweep:
        return None
    return visit if visit.get("time", 0) >= since else None


def summarize(name: str, visits: list[dict[str, Any]]) -> str:
    """One line of counts per outcome, then one line per job that failed or was refused."""
    counts = Counter(v["outcome"] for v in visits)
    shown = [o for o in OUTCOMES if o in OUTCOMES[:5] or counts.get(o)]
    line = ", ".join(f"{counts.get(o, 0)} {o.replace('_', ' ')}" for o in shown)
    lines = [f"normbench sweep {name}: {len(visits)} runs: {line}"]
    for v in visits:
        if v["outcome"] == "failed":
            lines.append(
                f"  failed, log: {v.get('log') or v['dir']}" + (f" ({v['error']})" if v.get("error") else "")
            )
        elif v["outcome"] == "config_error":
            lines.append(f"  configuration error ({v['dir']}): {v.get('error')}")
        elif v["outcome"] in ("unfinished", "running_elsewhere", "interrupted"):
            lines.append(f"  {v['outcome'].replace('_', ' ')}: {v['dir']}")
    return "\n".join(lines)


def write_summary(sweep_dir: Path, summary: str) -> None:
    """``summary.txt``, or one line saying why it could not be written (a read-only or full disk must
    not turn the end of a sweep into a traceback)."""
    try:
        write_text_atomic(sweep_dir / "summary.txt", summary + "\n")
    except OSError as exc:
        log.error("could not write %s: %s", sweep_dir / "summary.txt", exc.strerror or exc)


@dataclass
class Job:
    overrides: list[str]
    folder: Path | None  # None when the job folder is not known before the job runs
    digest: str
    force: bool

    def finished(self) -> bool:
        """Does the job's folder hold a completed or diverged result of this very config?"""
        return self.folder is not None and previous_result(self.folder, self.digest) is not None


class ResumingSweeper(Sweeper):
    """Hydra's basic grid sweeper (same ``params`` and ``max_batch_size``), resuming and summarizing."""

    def __init__(self, max_batch_size: int | None = None, params: dict[str, str] | None = None) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

        self._grid = BasicSweeper(max_batch_size=max_batch_size, params=params)
        self.max_batch_size = max_batch_size
        self.config: DictConfig | None = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: DictConfig) -> None:
        n_jobs = OmegaConf.select(config, "hydra.launcher.n_jobs", default=None)
        if n_jobs is not None and (not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0):
            raise ConfigError(
                f"hydra.launcher.n_jobs={n_jobs}: must be an integer >= 1 (or, for joblib, -N: all cores but N-1)"
            )
        self._grid.setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.config = config
        self.hydra_context = hydra_context
        self.launcher = self._grid.launcher

    def _jobs(self, arguments: list[str]) -> list[Job]:
        """Every job of the grid, its config composed and checked (ConfigError on a bad value)."""
        params = [*self._grid._parse_config(), *arguments]
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        grid = [
            job for batch in self._grid.split_arguments(parser.parse_overrides(params), None) for job in batch
        ]
        bases: dict[tuple[str, ...], DictConfig] = {}
        jobs = []
        for overrides in grid:
            cfg = self._compose(parser, list(overrides), bases)
            try:
                check_values(cfg)
            except ConfigError as exc:
                raise ConfigError(f"{exc} (sweep job {' '.join(overrides)})") from None
            digest = run_identity(cfg)[1]
            raw_subdir = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)["subdir"]
            try:
                subdir = digest if raw_subdir == HASH_SUBDIR else str(cfg.hydra.sweep.subdir)
                folder: Path | None = Path(cfg.hydra.sweep.dir) / subdir
            except Exception:  # a subdir that needs the job's runtime (e.g. ${hydra.job.num})
                folder = None
            jobs.append(Job(list(overrides), folder, digest, bool(cfg.runtime.force)))
        return jobs

    def _compose(
        self, parser: OverridesParser, overrides: list[str], bases: dict[tuple[str, ...], DictConfig]
    ) -> DictConfig:
        """The job's config as Hydra composes it, less the ``hydra`` node (but for its sweep folder).

        A full composition costs ~0.2 s, so jobs that share their config-group choices (and +/~
        overrides) share one; their plain ``key=value`` overrides are applied to a copy the way Hydra
        applies them (``OmegaConf.update``, merging). The job itself is composed by Hydra in full."""
        loader = self.hydra_context.config_loader
        plain, structural = [], []
        for o in parser.parse_overrides(overrides):
            simple = not (o.is_add() or o.is_delete() or o.is_force_add()) and o.package is None
            is_plain = simple and not loader.repository.group_exists(o.key_or_group)
            (plain if is_plain else structural).append(o)
        key = tuple(o.input_line for o in structural)
        if key not in bases:
            base = loader.load_sweep_config(master_config=self.config, sweep_overrides=list(key))
            sweep = OmegaConf.to_container(base.hydra.sweep, resolve=False)
            with read_write(base), open_dict(base):  # the typed nodes stay typed; hydra shrinks
                base.hydra = {"sweep": sweep}
            bases[key] = base
        cfg = copy.deepcopy(bases[key])
        with read_write(cfg):
            for o in plain:
                if o.key_or_group.startswith("hydra.") and not o.key_or_group.startswith("hydra.sweep."):
                    continue  # launcher and job settings: no part of the identity or the folder
                try:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
                except OmegaConfBaseException as exc:
                    raise ConfigCompositionException(f"Could not override '{o.key_or_group}'") from exc
        return cfg

    def sweep(self, arguments: list[str]) -> list[JobReturn]:
        assert self.config is not None
        started = time.time()
        token = os.environ[SWEEP_TOKEN] = f"{os.getpid()}-{time.time_ns()}"
        sweep_dir = Path(self.config.hydra.sweep.dir)
        name = self.config.hydra.sweep.dir
        jobs = self._jobs(arguments)
        jobs, repeated = _first_of_each_folder(jobs)
        if repeated:
            log.warning(
                "%s: %d grid point(s) repeat an earlier one's config (e.g. %s); each config trains once",
                name,
                len(repeated),
                " ".join(repeated[0].overrides),
            )
        skipped, pending = [], []
        for job in jobs:
            (pending if job.force or not job.finished() else skipped).append(job)
        for job in skipped:  # a finished run's folder: what a killed process left half-written there
            remove_stale_temporaries(job.folder, held=False)
        try:
            sweep_dir.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        except OSError as exc:  # a read-only or full disk: a finished sweep can still report
            if pending:
                raise ConfigError(
                    f"hydra.sweep.dir={sweep_dir}: cannot write there ({exc.strerror or exc}); "
                    f"{len(pending)} of {len(jobs)} runs are still to train"
                ) from None
            log.warning("could not write %s: %s", sweep_dir / "multirun.yaml", exc.strerror or exc)
        if len(pending) < len(jobs):
            log.info("%s: %d of %d runs already finished, skipped", name, len(jobs) - len(pending), len(jobs))
        returns: list[JobReturn] = []
        size = self.max_batch_size or max(1, len(pending))
        crashed: BaseException | None = None
        for start in range(0, len(pending), size):
            batch = [j.overrides for j in pending[start : start + size]]
            try:
                returns += list(self.launcher.launch(batch, initial_job_idx=start))
            except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: summarize, then stop with it
                crashed = exc
                break
            except Exception as exc:  # e.g. a worker process killed: summarize what did finish
                log.error("the launcher stopped: %s: %s", type(exc).__name__, exc)
                crashed = exc
                break
        interrupted = isinstance(crashed, KeyboardInterrupt)
        visits = [{"outcome": "skipped", "dir": str(j.folder)} for j in skipped]
        visits += [{"outcome": "repeated", "dir": str(j.folder)} for j in repeated]
        for i, job in enumerate(pending):
            visit = self._outcome(job, returns[i] if i < len(returns) else None, started, token)
            if interrupted and visit["outcome"] == "unfinished":
                visit["outcome"] = "interrupted"
            visits.append(visit)
        summary = summarize(name, visits)
        print(summary, flush=True)
        write_summary(sweep_dir, summary)
        if interrupted:
            raise crashed
        if crashed is not None or any(v["outcome"] in BAD_OUTCOMES for v in visits):
            raise SystemExit(1)
        return returns

    @staticmethod
    def _outcome(job: Job, ret: JobReturn | None, since: float, sweep: str | None = None) -> dict[str, Any]:
        folder = job.folder
        if folder is None and ret is not None and ret.working_dir:
            folder = Path(ret.working_dir)
        visit = read_visit(folder, since, sweep) if folder is not None else None
        if visit is not None:
            return {**visit, "dir": str(folder)}
        if ret is not None and ret.status == JobStatus.FAILED:
            error = f"{type(ret._return_value).__name__}: {ret._return_value}"
            return {"outcome": "failed", "dir": str(folder), "error": error, "log": None}
        if folder is not None and is_locked(folder):
            return {"outcome": "running_elsewhere", "dir": str(folder)}
        if job.finished():  # another process finished it while this sweep ran
            return {"outcome": "skipped", "dir": str(folder)}
        return {"outcome": "unfinished", "dir": str(folder)}


def _first_of_each_folder(jobs: list[Job]) -> tuple[list[Job], list[Job]]:
    """The jobs, each run folder's first only, and the rest: two grid points of one config would train
    it twice into one folder (at once, under a parallel launcher or in one population)."""
    seen: set[Path] = set()
    first, repeated = [], []
    for job in jobs:
        if job.folder is not None and job.folder in seen:
            repeated.append(job)
        else:
            first.append(job)
            if job.folder is not None:
                seen.add(job.folder)
    return first, repeated


@dataclass
class ResumingSweeperConf:
    _target_: str = "hydra_plugins.normbench_sweeper.normbench_sweeper.NormbenchSweeper"
    max_batch_size: Any = None
    params: Any = None


def register_sweeper() -> None:
    ConfigStore.instance().store(group="hydra/sweeper", name="normbench", node=ResumingSweeperConf)


def optuna_problem(sweeper: DictConfig) -> str | None:
    """Why the ``hydra/sweeper=optuna`` settings ``sweeper`` cannot run a search, or None: what the
    Optuna sweeper would otherwise find only as a traceback (a direction at the study's creation, zero
    trials when it asks for the best one)."""
    for key in ("n_trials", "n_jobs"):
        value = sweeper.get(key)
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return f"hydra.sweeper.{key}={value}: must be an integer >= 1"
    rate = sweeper.get("max_failure_rate", 0.0)
    if not (is_finite_number(rate) and 0 <= rate <= 1):
        return f"hydra.sweeper.max_failure_rate={rate}: must be a fraction in [0, 1]"
    direction = sweeper.get("direction")
    if getattr(direction, "name", direction) not in ("minimize", "maximize"):
        return (
            f"hydra.sweeper.direction={direction}: must be minimize or maximize (a run's objective is one "
            "value: its validation error)"
        )
    return None


class SweeperSettings(Callback):
    """Checks the settings of a sweeper from outside normbench before it starts (``hydra.callbacks`` in
    conf/config.yaml): one line from ``normbench-run`` and exit status 2, as for any configuration
    error, instead of the sweeper's traceback. (Hydra turns a callback's exceptions into warnings and
    goes on; SystemExit it lets through.)"""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweeper = config.hydra.sweeper
        problem = optuna_problem(sweeper) if "optuna" in str(sweeper.get("_target_", "")).lower() else None
        if problem:
            print(f"normbench-run: error: {problem}", file=sys.stderr)
            raise SystemExit(2)
