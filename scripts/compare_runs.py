"""How closely two trainings of the same configs agree: e.g. a study trained as populations against the
same study trained run by run. Runs are paired by config hash; for each pair the relative difference of
the test loss and the difference of the test error, then the paired mean difference of the test error
with its Student t 95% interval (scipy.stats), overall and per task and batch size. With ``--study``,
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

from normbench.report import load_runs


def interval(diff: pd.Series) -> str:
    if (diff == 0).all():
        return "0 in every pair (no interval to compute)"
    ci = stats.ttest_1samp(diff, 0.0).confidence_interval(0.95)
    p = stats.ttest_1samp(diff, 0.0).pvalue
    return f"{100 * diff.mean():+.2f} pp [{100 * ci.low:+.2f}, {100 * ci.high:+.2f}], p = {p:.2g}"


def _claims(runs: pd.DataFrame, study) -> dict[str, tuple]:
    from normbench.report.select import select_on_validation
    from normbench.report.study import evaluate_claims

    selected, _ = select_on_validation(runs, study.select) if study.select else (runs, None)
    return {r.name: (c, r) for _, claims in evaluate_claims(study, runs, selected) for c, r in claims}


def _verdict(result) -> tuple[bool, bool]:
    return result.established, result.equivalent


def claim_agreement(a: pd.DataFrame, b: pd.DataFrame, path: Path) -> list[str]:
    """The study's claims on each training: estimate, interval and verdict side by side."""
    from normbench.report.contrasts import sentence
    from normbench.report.study import load_study

    study = load_study(path)
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
            ra, rb = ours[name][1], theirs[name][1]
            decide = (
                (lambda r: r.p_tost)
                if ra.established == rb.established
                else (lambda r: r.p if math.isnan(r.p_holm) else r.p_holm)
            )
            lines.append(
                f"- {name}: p = {decide(ra):.2g} (a), {decide(rb):.2g} (b); a − b = "
                f"{100 * (ra.mean - rb.mean):+.2f} pp."
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", type=Path, help="sweep folder(s) root of the first training (e.g. populations)")
    parser.add_argument("b", type=Path, help="sweep folder(s) root of the second (e.g. run by run)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--study", type=Path, help="a study description: compare its claims too")
    args = parser.parse_args()
    a, b = load_runs(args.a), load_runs(args.b)
    pairs = a.merge(b, on="config_hash", suffixes=("_a", "_b"))
    same_status = (pairs.status_a == pairs.status_b).sum()
    done = pairs[(pairs.status_a == "completed") & (pairs.status_b == "completed")].copy()
    done["rel_loss"] = (done.test_loss_a - done.test_loss_b).abs() / done.test_loss_b
    done["d_error"] = done.test_error_a - done.test_error_b
    lines = [
        f"# Agreement of {args.a} (a) with {args.b} (b)",
        "",
        f"Generated by `python scripts/compare_runs.py {args.a} {args.b} --out {args.out}"
        f"{f' --study {args.study}' if args.study else ''}`.",
        "",
        f"- {len(pairs)} configs in both ({len(a)} in a, {len(b)} in b); the same status in {same_status}; "
        f"both completed in {len(done)}.",
        f"- Test loss of a within 1e-5 relative of b's: {(done.rel_loss <= 1e-5).sum()} runs; within 1e-3: "
        f"{(done.rel_loss <= 1e-3).sum()}; within 1e-2: {(done.rel_loss <= 1e-2).sum()}; median relative "
        f"difference {done.rel_loss.median():.1e}.",
        f"- Test error, a − b: median {100 * done.d_error.median():+.2f} pp, largest |a − b| "
        f"{100 * done.d_error.abs().max():.1f} pp; paired mean {interval(done.d_error)}.",
        "",
        "| task | batch size | runs | within 1e-5 | median rel. test-loss difference "
        "| mean test-error difference a − b, 95% CI |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for (task, batch), group in done.groupby(["task_a", "batch_size_a"]):
        lines.append(
            f"| {task} | {batch} | {len(group)} | {(group.rel_loss <= 1e-5).sum()} | {group.rel_loss.median():.1e} "
            f"| {interval(group.d_error)} |"
        )
    if args.study:
        both = set(a["config_hash"]) & set(b["config_hash"])
        lines += claim_agreement(a[a["config_hash"].isin(both)], b[b["config_hash"].isin(both)], args.study)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
