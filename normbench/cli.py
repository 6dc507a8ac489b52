"""Command-line entry points: ``normbench-run`` (a Hydra app) and ``normbench-report``."""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import shutil
import signal
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from normbench.config import ConfigError, register_configs
from normbench.experiment.identity import check_folder, claim_folder, previous_result, run_identity
from normbench.experiment.run import execute
from normbench.population.launcher import register_launcher
from normbench.results import LOCK_FILE
from normbench.sweep import mark_visit, register_sweeper

log = logging.getLogger("normbench")

_PACKAGED = Path(__file__).parent / "conf"  # a regular install ships conf/ inside the package
CONF_DIR = _PACKAGED if _PACKAGED.is_dir() else Path(__file__).parents[1] / "conf"


def _hash_resolver(*, _root_: DictConfig) -> str:
    """``${normbench_hash:}``: the run's config hash, used to name its sweep sub-folder."""
    return run_identity(_root_)[1]


if not OmegaConf.has_resolver("normbench_hash"):
    OmegaConf.register_new_resolver("normbench_hash", _hash_resolver)
register_configs()
register_sweeper()
register_launcher()


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


def remove_if_unused(out_dir: Path) -> None:
    """Delete a run folder that holds nothing but what Hydra put there (its .hydra/ and the log) and the
    run lock, then its parents up to the working directory while they are empty."""
    if not out_dir.is_dir() or any(
        p.name not in (".hydra", "normbench.log", LOCK_FILE) for p in out_dir.iterdir()
    ):
        return
    shutil.rmtree(out_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    parent = out_dir.resolve().parent
    while parent != cwd and cwd in parent.parents and not any(parent.iterdir()):
        parent.rmdir()
        parent = parent.parent


def objective(record: dict | None) -> float | None:
    """What a hyper-parameter search (``hydra/sweeper=optuna``) optimizes: the validation counterpart
    of the run's main metric (``val_error`` for ``test_error``; the test set chooses nothing). A
    diverged run gives its worst value (1 for an error, +-inf otherwise); None where there is none
    (a failed run, a task without a validation metric), which Optuna records as a failed trial."""
    if not record:
        return None
    main = record.get("main_metric") or {"name": "test_error", "lower_is_better": True}
    name = str(main["name"])
    if record.get("status") == "diverged":
        return 1.0 if name.endswith("error") else (math.inf if main["lower_is_better"] else -math.inf)
    value = (
        (record.get("metrics") or {}).get(name.replace("test_", "val_", 1))
        if name.startswith("test_")
        else None
    )
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def train_job(
    cfg: DictConfig, out_dir: Path, multirun: bool, distributed: bool
) -> tuple[str, str | None, float | None]:
    """Run the job in ``out_dir`` unless a final result is there or another process holds it; returns
    what happened (``completed``, ``diverged``, ``failed``, ``skipped`` or ``running_elsewhere``), the
    run's error message, if any, and its :func:`objective` (a skipped run's from its record)."""
    progress = cfg.runtime.progress and sys.stderr.isatty() and not multirun
    # torchrun: every process runs this same job in the same folder, so no lock
    check_folder(cfg, out_dir)
    with ExitStack() as locks:
        why = claim_folder(cfg, out_dir, locks, lock=not distributed)
        if why is not None:
            done = previous_result(out_dir, run_identity(cfg)[1]) if why == "skipped" else None
            return why, None, objective(done)
        record = execute(cfg, out_dir, progress)
    metrics, metric = record["metrics"], cfg.task.metric
    log.info(
        "%s: %s %s, %d steps, result in %s",
        record["status"],
        metric,
        f"{metrics[metric]:.4f}" if isinstance(metrics.get(metric), float) else "n/a",
        record["steps"],
        out_dir,
    )
    return record["status"], record.get("error"), objective(record)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _main(cfg: DictConfig) -> float | None:
    """One job; returns its :func:`objective` (what ``hydra/sweeper=optuna`` optimizes)."""
    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    multirun = hc.mode == RunMode.MULTIRUN
    log_file = str(out_dir / f"{hc.job.name}.log")
    rank = int(os.environ.get("RANK", "0"))
    if rank != 0:  # torchrun: process 0 speaks for the run
        logging.getLogger().setLevel(logging.WARNING)
    cap_threads_for_parallel_jobs(cfg, hc)
    try:
        outcome, error, value = train_job(cfg, out_dir, multirun, int(os.environ.get("WORLD_SIZE", "1")) > 1)
    except ConfigError as exc:
        if multirun:  # sys.exit here would abort the whole sweep: the sweeper exits non-zero at the end
            log.error("configuration error: %s", exc)
            mark_visit(out_dir, "config_error", log_file, error=str(exc))
            return None
        remove_if_unused(out_dir)
        print(f"normbench-run: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # e.g. the record could not be written: never stop the sweep
        if isinstance(exc, OSError):  # a full or read-only disk: the file and the reason say it all
            log.error("run failed outside training: %s: %s", exc.filename or out_dir, exc.strerror or exc)
        else:
            log.exception("run failed outside training: %s", exc)
        outcome = "failed"
        if rank == 0:
            mark_visit(out_dir, outcome, log_file, error=f"{type(exc).__name__}: {exc}")
        if not multirun:
            sys.exit(1)
        return None
    if rank == 0 and outcome != "running_elsewhere":
        mark_visit(out_dir, outcome, log_file, error=error)
    if not multirun and outcome == "failed":
        sys.exit(1)
    return value


def _aliased_norm(choice: str) -> str | None:
    """The canonical name of the norm that ``choice`` is an alias of (``gn``: groupnorm), or None."""
    from normbench.norms import norm_spec

    try:
        name = norm_spec(choice).name
    except (KeyError, TypeError):
        return None
    return name if name != choice else None


def _one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages as one line that names the bad value, with a
    "did you mean" where a near miss exists."""
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__)
    text = " ".join(str(e) for e in chain)
    if "ResumingSweeperConf" in text:  # e.g. hparams_search=... without hydra/sweeper=optuna
        key = text.split("Key '", 1)[1].split("'", 1)[0] if "Key '" in text else "?"
        return (
            f"hydra.sweeper.{key}: not a setting of normbench's sweeper; choose the sweeper it belongs to on "
            "the command line, e.g. hydra/sweeper=optuna (pip install 'normbench[optuna]')"
        )
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, choice = exc.missing_cfg_file.rpartition("/")
        options = list(exc.options or [])
        close = difflib.get_close_matches(choice, options, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]}?" if close else ""
        alias = _aliased_norm(choice) if group == "norm" else None
        if alias:  # build_norm takes aliases; a config group's choices are its files' names
            hint = f"; did you mean {alias}? (build_norm takes {choice} for it; a config takes its name)"
        return f"{group}={choice}: unknown {group}{hint} (available: {', '.join(options)})"
    if isinstance(exc.__cause__, ConfigError):  # e.g. a launcher option, raised inside instantiate
        return str(exc.__cause__)
    cause = exc.__cause__ if isinstance(exc.__cause__, OmegaConfBaseException) else exc
    if isinstance(cause, OmegaConfBaseException):
        key = getattr(cause, "full_key", None) or ""
        message = str(cause).splitlines()[0]
        if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
            return _unknown_key(key, cause.parent_node)
        value = getattr(cause, "value", None)
        return f"{key}={value}: {message}" if key else message
    return " ".join(str(exc).split("\n")[0].split())


def _unknown_key(full_key: str, parent: Any) -> str:
    """An unknown dotted key with the keys allowed where it was set, from the node of the config being
    composed (``norm=layernorm`` has other keys than the default norm), and a "did you mean"."""
    path, _, leaf = full_key.rpartition(".")
    if not isinstance(parent, DictConfig):
        return f"{full_key}: unknown key"
    keys = [str(k) for k in parent if k != "hydra"]
    close = difflib.get_close_matches(leaf, keys, n=1, cutoff=0.5)
    hint = f"; did you mean {f'{path}.' if path else ''}{close[0]}?" if close else ""
    choice = parent.get("name") if path and "." not in path else None  # the group's choice
    choice = getattr(choice, "value", choice)  # an enum's name (optim.name)
    where = f" for {path}={choice}" if isinstance(choice, str) else ""
    return f"{full_key}: unknown key{where}{hint} (allowed: {', '.join(keys)})"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the process is, as Ctrl-C raises KeyboardInterrupt: the same clean
    stop (a sweep writes its summary; run locks go with the process)."""

    signum = signal.SIGTERM


def _terminate(signum: int, frame: Any) -> None:
    raise Terminated()


def _refuse_study_override(args: list[str]) -> None:
    """``study=NAME``: Hydra lists conf/study/ as a config group, but its files describe studies for
    scripts/small_batch_study.sh, not runs."""
    for arg in args:
        match = re.match(r"[+~]*study(?:@[^=]*)?=(.*)", arg)
        if match:
            name = match.group(1) or "NAME"
            raise ConfigError(
                f"{arg}: conf/study/ holds study descriptions, not run settings; run a study with "
                f"scripts/small_batch_study.sh --study conf/study/{name}.yaml (make study for the default)"
            )


def run() -> None:
    """``normbench-run``: train one run (or a sweep with ``-m``). Configuration errors print one line
    and exit 2 (set HYDRA_FULL_ERROR=1 for Hydra's own report); SIGINT and SIGTERM stop it with one
    line and exit 130 or 143, keeping every finished run (the same command resumes the rest)."""
    full_error = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing; we print one line
    previous = signal.signal(signal.SIGTERM, _terminate)
    # Ctrl-C stops a run even where it was started with SIGINT ignored (a background job of a script,
    # some test runners' workers): Python keeps an inherited SIG_IGN, and the run would go on
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    # joblib's resource tracker (a process of its own) warns about the semaphores of workers that a
    # signal stopped; the stop is reported in one line here instead
    filters = [f for f in os.environ.get("PYTHONWARNINGS", "").split(",") if f]
    os.environ["PYTHONWARNINGS"] = ",".join([*filters, "ignore:resource_tracker:UserWarning"])
    try:
        _refuse_study_override(sys.argv[1:])
        _main()
    except (HydraException, OmegaConfBaseException, ConfigError) as exc:
        if full_error:
            raise
        print(f"normbench-run: error: {_one_line(exc)}", file=sys.stderr)
        sys.exit(2)
    except OSError as exc:  # e.g. an output folder on a read-only or full disk
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"normbench-run: error: {where}{exc.strerror or exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt as exc:
        signum = getattr(exc, "signum", signal.SIGINT)
        print(
            f"normbench-run: stopped by {signal.Signals(signum).name}: finished runs are kept, "
            "the same command resumes the rest",
            file=sys.stderr,
        )
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)


def report(argv: list[str] | None = None) -> None:
    """``normbench-report SWEEP_DIR [SWEEP_DIR ...] --out DIR``."""
    from normbench.report.cli import main

    main(argv)
