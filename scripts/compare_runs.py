"""How closely two trainings of the same configs agree: e.g. a study trained as populations against the
same study trained run by run. Runs are paired by config hash; for each pair the relative difference of
the test loss (where the task has one) and the difference of the task's main metric (``task.metric``:
the test error, or e.g. a GAN's Fréchet distance), then the paired mean difference of that metric with
its Student t 95% interval (scipy.stats), overall per metric and per task and batch size. With ``--study``,
every claim of that study description whose cells both trainings hold, with each training's own
learning-rate selection among the configs both hold: both estimates, both verdicts, and whether they
agree.

    python scripts/compare_runs.py reports/small_batch_population/records.jsonl reports/small_batch_v1/records.jsonl \\
        --out reports/small_batch_population/agreement.md
    python scripts/compare_runs.py reports/small_batch/records.jsonl reports/small_batch_separate/records.jsonl \\
        --study conf/study/small_batch.yaml --out reports/small_batch_separate/agreement.md
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd
from scipy import stats

from normbench.argtypes import writable_file
from normbench.report import load_runs
from normbench.report.study import Study, StudyError, load_study
from normbench.results import write_text_atomic

ERROR = "test_error"


def unit(metric: str) -> tuple[float, str]:
    """How a metric's differences are written: errors (fractions) in percentage points, others as they are."""
    return (100.0, "pp") if metric == ERROR else (1.0, metric)


def interval(diff: pd.Series, metric: str = ERROR) -> str:
    if (diff == 0).all():
        return "0 in every pair (no interval to compute)"
    scale, name = unit(metric)
    test = stats.ttest_1samp(diff, 0.0)
    ci = test.confidence_interval(0.95)
    return f"{scale * diff.mean():+.2f} {name} [{scale * ci.low:+.2f}, {scale * ci.high:+.2f}], p = {test.pvalue:.2g}"


def metric_differences(done: pd.DataFrame) -> pd.DataFrame:
    """``done`` (paired completed runs) with ``metric``, each task's main metric, and ``d_metric``, a − b."""
    # records from before tasks named their metric are classifiers
    done = done.assign(metric=done["task.metric_a"].fillna(ERROR) if "task.metric_a" in done else ERROR)
    done["d_metric"] = [
        getattr(row, f"{row.metric}_a") - getattr(row, f"{row.metric}_b") for row in done.itertuples()
    ]
    return done


def _claims(runs: pd.DataFrame, study) -> dict[str, tuple]:
    from normbench.report.select import select_on_validation
    from normbench.report.study import evaluate_claims

    selected, _ = select_on_validation(runs, study.select) if study.select else (runs, None)
    return {r.name: (c, r) for _, claims in evaluate_claims(study, runs, selected) for c, r in claims}


def _verdict(result) -> tuple[bool, bool]:
    return result.established, result.equivalent


def claim_agreement(a: pd.DataFrame, b: pd.DataFrame, study: Study, path: Path) -> list[str]:
    """The study's claims on each training: estimate, interval and verdict side by side."""
    from normbench.report.contrasts import sentence

    ours, theirs = _claims(a, study), _claims(b, study)
    names = [n for n in ours if n in theirs]
    lines = [
        "",
        f"## The claims of {path} on both trainings",
        "",
        "Each training chooses its own learning rates on its validation split, among the configs both hold.",
        "A verdict is whether the claim is established and whether its cells are within the margin by",
        f"two one-sided tests. {sum(_verdict(ours[n][1]) == _verdict(theirs[n][1]) for n in names)} of "
        f"{len(names)} verdicts agree.",
        "",
        "| claim | a | b | same verdict |",
        "|---|---|---|---|",
    ]
    for name in names:
        (claim, ra), (_, rb) = ours[name], theirs[name]
        a_text, b_text = (sentence(r, claim.unit.scale, claim.unit.name)[len(name) + 2 :] for r in (ra, rb))
        same = "yes" if _verdict(ra) == _verdict(rb) else "no"
        lines.append(f"| {name} | {a_text} | {b_text} | {same} |")
    differ = [n for n in names if _verdict(ours[n][1]) != _verdict(theirs[n][1])]
    if differ:
        lines += [
            "",
            "Where they differ, the p-value that decides the differing part (TOST's where only the",
            "equivalence differs, else the claim's own test) in each training, and the estimates' difference:",
            "",
        ]
        for name in differ:
            (claim, ra), rb = ours[name], theirs[name][1]
            decide = (
                (lambda r: r.p_tost)
                if ra.established == rb.established
                else (lambda r: r.p if math.isnan(r.p_holm) else r.p_holm)
            )
            lines.append(
                f"- {name}: p = {decide(ra):.2g} (a), {decide(rb):.2g} (b); a − b = "
                f"{claim.unit.scale * (ra.mean - rb.mean):+.2f} {claim.unit.name}."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="sweep folder(s) root of the first training (e.g. populations)")
    parser.add_argument("b", type=Path, help="sweep folder(s) root of the second (e.g. run by run)")
    parser.add_argument("--out", type=writable_file, required=True)
    parser.add_argument("--study", type=Path, help="a study description: compare its claims too")
    args = parser.parse_args()
    try:  # every input read, and the report's folder there, before anything is computed
        study = load_study(args.study) if args.study else None
        a, b = load_runs(args.a), load_runs(args.b)
    except (OSError, StudyError) as exc:
        parser.error(str(exc))
    pairs = a.merge(b, on="config_hash", suffixes=("_a", "_b"))
    if pairs.empty:
        parser.error(
            f"{args.a} ({len(a)} runs) and {args.b} ({len(b)} runs) hold no config in common: nothing to pair"
        )
    same_status = (pairs.status_a == pairs.status_b).sum()
    done = pairs[(pairs.status_a == "completed") & (pairs.status_b == "completed")].copy()
    done["rel_loss"] = (done.test_loss_a - done.test_loss_b).abs() / done.test_loss_b
    done = metric_differences(done)
    losses = done.dropna(subset=["rel_loss"])
    lines = [
        f"# Agreement of {args.a} (a) with {args.b} (b)",
        "",
        f"Generated by `python scripts/compare_runs.py {args.a} {args.b} --out {args.out}"
        f"{f' --study {args.study}' if args.study else ''}`.",
        "",
        f"- {len(pairs)} configs in both ({len(a)} in a, {len(b)} in b); the same status in {same_status}; "
        f"both completed in {len(done)}.",
        f"- Test loss of a within 1e-5 relative of b's: {(losses.rel_loss <= 1e-5).sum()} runs; within 1e-3: "
        f"{(losses.rel_loss <= 1e-3).sum()}; within 1e-2: {(losses.rel_loss <= 1e-2).sum()}; median relative "
        f"difference {losses.rel_loss.median():.1e}"
        f"{f' (of the {len(losses)} runs whose task has a test loss)' if len(losses) < len(done) else ''}.",
    ]
    for metric, runs in done.groupby("metric", sort=False):
        scale, name = unit(metric)
        lines.append(
            f"- {'Test error' if metric == ERROR else metric}, a − b: median {scale * runs.d_metric.median():+.2f} "
            f"{name}, largest |a − b| {scale * runs.d_metric.abs().max():.1f} {name}; paired mean "
            f"{interval(runs.d_metric, metric)}{f' ({len(runs)} runs)' if len(runs) < len(done) else ''}."
        )
    errors_only = (done.metric == ERROR).all()
    lines += [
        "",
        "| task | batch size | runs | within 1e-5 | median rel. test-loss difference "
        f"| {'mean test-error difference a − b' if errors_only else 'mean difference a − b of its metric'}, 95% CI |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for (task, batch), group in done.groupby(["task_a", "batch_size_a"]):
        loss = group.dropna(subset=["rel_loss"])
        within, median = (
            ((loss.rel_loss <= 1e-5).sum(), f"{loss.rel_loss.median():.1e}")
            if len(loss)
            else ("–", "no test loss")
        )
        metric = group.metric.iloc[0]
        label = "" if errors_only else f"{metric}: "
        lines.append(
            f"| {task} | {batch} | {len(group)} | {within} | {median} | {label}{interval(group.d_metric, metric)} |"
        )
    if study is not None:
        both = set(a["config_hash"]) & set(b["config_hash"])
        lines += claim_agreement(
            a[a["config_hash"].isin(both)], b[b["config_hash"].isin(both)], study, args.study
        )
    write_text_atomic(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
