"""The documentation stays true: the plugin reference is the registry's, and every relative link of the
README and the docs pages points at a file that exists."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from normbench import build_norm, norm_spec
from normbench.docs import (
    AGREEMENT,
    COMPARISONS,
    HOME,
    PAGE,
    STUDY_REPORT,
    agreement_summary,
    home_page,
    main,
    norms_page,
    readme_with_table,
)

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_the_plugin_reference_is_generated_from_the_registry():
    assert PAGE.read_text() == norms_page()  # else: python -m normbench.docs
    main(["--check"])
    for name in ("batchnorm", "groupnorm", "switchnorm"):
        assert f"\n## {name}\n" in PAGE.read_text()


def test_the_home_page_is_the_readme_with_links_from_docs():
    assert HOME.read_text() == home_page((ROOT / "README.md").read_text())  # else: python -m normbench.docs
    assert home_page("[a](docs/runs.md) [b](reports/x.md#y) [c](https://e.org) [d](#top)") == (
        "[a](runs.md) [b](../reports/x.md#y) [c](https://e.org) [d](#top)"
    )


def test_the_readme_holds_the_default_studys_table_as_its_report_writes_it():
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme, STUDY_REPORT.read_text())  # else: python -m normbench.docs
    table = readme.split("<!-- recommendation table", 1)[1].split("<!-- end of the recommendation table", 1)[
        0
    ]
    report = STUDY_REPORT.read_text()
    rows = [line for line in table.splitlines() if line.startswith("|")]
    tasks = [
        line for line in table.splitlines() if line.startswith("**")
    ]  # one table per task trained so far
    assert tasks and len(rows) >= len(tasks) * (2 + 7) and all(row in report for row in rows)  # 7 batch sizes
    fake = "# S\n\n## Which norm at my batch size\n\nintro\n\ntest_error (%) legend `curve_x.csv`.\n\n| a |\n\n## Protocol\n"
    marked = "x\n<!-- recommendation table: copied from reports/small_batch/report.md by python -m normbench.docs -->\nold\n<!-- end of the recommendation table -->\ny"
    assert readme_with_table(marked, fake).split("\n")[2:5] == [
        "test_error (%) legend `reports/small_batch/curve_x.csv`.",
        "",
        "| a |",
    ]


def test_the_readmes_registry_example_runs(isolated_registry):
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"## The registry in 10 lines\n\n```python\n(.*?)```", readme, re.S).group(1)
    assert len([line for line in code.splitlines() if line.strip()]) <= 10
    exec(compile(code, "README.md", "exec"), {})
    assert norm_spec("centernorm").paper == "a formula of your own"
    y = build_norm("centernorm", 3)(torch.randn(2, 3, 4))
    torch.testing.assert_close(y.mean(dim=1), torch.zeros(2, 4), atol=1e-6, rtol=0)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_at_a_file(page):
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    relative = [t.split("#")[0] for t in targets if not t.startswith(("http", "mailto:", "#"))]
    missing = [t for t in relative if t and not (page.parent / t).exists()]
    assert not missing, f"{page.name}: links to missing files {missing}"


def test_the_site_lists_every_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert all(p.name in nav for p in PAGES if p.parent.name == "docs")


def test_site_links_outside_docs_point_into_the_repository():
    import importlib.util
    from types import SimpleNamespace

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "scripts" / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    page = SimpleNamespace(file=SimpleNamespace(src_uri="study.md"))
    text = (
        "[a](../reports/x.md#h) ![f](../reports/f.svg) [b](runs.md#y) [c](https://e.org) [d](../examples/p/)"
    )
    assert hooks.on_page_markdown(text, page, {"repo_url": "https://github.com/o/r/"}, None) == (
        "[a](https://github.com/o/r/blob/main/reports/x.md#h) ![f](https://github.com/o/r/raw/main/reports/f.svg) "
        "[b](runs.md#y) [c](https://e.org) [d](https://github.com/o/r/tree/main/examples/p)"
    )


def test_each_plugins_speed_comes_from_the_committed_benchmarks():
    import json

    from normbench.docs import committed_speeds

    speeds = committed_speeds()
    rows = json.loads((ROOT / "reports/bench/norms_cuda.json").read_text())["rows"]
    gpu = [r for r in rows if r["norm"] == "batchrenorm" and r["precision"] == "fp32"]
    assert gpu and all(
        f"{r['vs_bn2d']:.2f}x at ({', '.join(map(str, r['shape']))})" in speeds["batchrenorm"] for r in gpu
    )
    cpu = [
        line
        for line in (ROOT / "reports/bench/norms.md").read_text().splitlines()
        if line.startswith("| images") and "| forward+backward | groupnorm |" in line
    ]
    assert len(cpu) == 1 and speeds["groupnorm"].startswith(
        f"{cpu[0].split(' | ')[6]} on CPU (32, 64, 32, 32)"
    )
    assert "## batchrenorm\n\nOptions:" in PAGE.read_text() and speeds["batchrenorm"] in PAGE.read_text()


def _compare_runs(a: str, b: str, tmp_path: Path, study: str | None = "conf/study/small_batch.yaml") -> Path:
    """The agreement of record files ``a`` and ``b`` (under ``study``), as scripts/compare_runs.py writes it."""
    out = tmp_path / "agreement.md"
    args = [sys.executable, "scripts/compare_runs.py", a, b, "--out", str(out)]
    subprocess.run(
        [*args, *(["--study", study] if study else [])],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return out


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing", "reports/example/records.jsonl"], r"sweep folder missing does not exist"),
        (["reports/example/records.jsonl", "reports/small_batch/records.jsonl"],
         r"reports/example/records\.jsonl \(\d+ runs\) and reports/small_batch/records\.jsonl \(\d+ runs\) hold no config in common: nothing to pair"),
        (["reports/example/records.jsonl"] * 2 + ["--study", "conf/study/nope.yaml"],
         r"study description conf/study/nope\.yaml: No such file or directory"),
    ],
)  # fmt: skip
def test_compare_runs_refuses_what_it_cannot_pair_before_writing(
    args, message, tmp_path, monkeypatch, capsys
):
    """A missing input or study was a traceback (the study's only after the comparison); two trainings
    without a common config wrote a report of nan medians."""
    import runpy

    out = tmp_path / "agreement.md"
    monkeypatch.chdir(ROOT)
    monkeypatch.setattr("sys.argv", ["scripts/compare_runs.py", *args, "--out", str(out)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path("scripts/compare_runs.py", run_name="__main__")
    assert exit_info.value.code == 2 and not out.exists()
    assert re.fullmatch(
        f"compare_runs.py: error: {message}", capsys.readouterr().err.strip().splitlines()[-1]
    )


AGREEMENTS = sorted((ROOT / "reports").glob("*/agreement.md"))


@pytest.mark.parametrize("agreement", AGREEMENTS, ids=[a.parent.name for a in AGREEMENTS])
def test_every_committed_agreement_regenerates_unchanged_by_the_command_it_names(agreement: Path, tmp_path):
    committed = agreement.read_text()
    named = re.search(r"^Generated by `python (scripts/compare_runs\.py .+)`\.$", committed, re.M)
    command = named.group(1).split()
    at = command.index("--out") + 1
    assert command[at] == agreement.relative_to(ROOT).as_posix()
    out = tmp_path / "agreement.md"
    subprocess.run(
        [sys.executable, *command[:at], str(out), *command[at + 1 :]],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    assert out.read_text().replace(str(out), command[at]) == committed


@pytest.mark.parametrize(("agreement", "page", "name"), COMPARISONS, ids=[c[2] for c in COMPARISONS])
def test_the_docs_summarise_the_study_comparisons(agreement: Path, page: Path, name: str):
    """How close population members are to runs trained alone (in the README), and how close a fresh
    clone's training of each study comes to the committed one (on the study's page): each comparison
    compares the study's claims (--study; the test above regenerates it) and its summary is the page's."""
    committed = agreement.read_text()
    assert "--study" in re.search(r"^Generated by `python (.+)`\.$", committed, re.M).group(1)
    summary = agreement_summary(committed)
    assert summary in page.read_text()
    assert re.search(r"^- \d+ of \d+ verdicts agree\.$", summary, re.M) and "paired mean" in summary


def test_the_agreement_table_counts_what_the_records_hold():
    """Each row of the per-batch table, recomputed from the two record files by hand: the pairs, how
    many test losses agree within 1e-5, and the mean test-error difference."""
    from normbench.report import load_runs

    a = load_runs(ROOT / "reports/small_batch/records.jsonl")
    b = load_runs(ROOT / "reports/small_batch_separate/records.jsonl")
    a_by_hash = {h: r for h, r in zip(a.config_hash, a.itertuples(), strict=True)}
    rows = {}
    for run in b.itertuples():
        twin = a_by_hash.get(run.config_hash)
        if twin is None or run.status != "completed" or twin.status != "completed":
            continue
        rel = abs(twin.test_loss - run.test_loss) / run.test_loss
        rows.setdefault((run.task, run.batch_size), []).append(
            (rel <= 1e-5, twin.test_error - run.test_error)
        )
    table = [
        line.split(" | ")
        for line in AGREEMENT.read_text().splitlines()
        if re.match(r"\| \w+ \| \d+ \| ", line)
    ]
    assert len(table) == len(rows) >= 2
    for cells in table:
        pairs = rows[(cells[0].removeprefix("| "), int(cells[1]))]
        assert int(cells[2]) == len(pairs) and int(cells[3]) == sum(same for same, _ in pairs)
        mean = 100 * sum(d for _, d in pairs) / len(pairs)
        assert (
            cells[5].startswith("0 in every pair")
            if all(d == 0 for _, d in pairs)
            else cells[5].startswith(f"{mean:+.2f} pp [")
        )


def test_two_identical_trainings_agree_on_every_verdict(tmp_path):
    """The comparison of a record file with itself: every pair equal, every verdict the same, and no
    list of differing claims."""
    b = "reports/small_batch_separate/records.jsonl"
    text = _compare_runs(b, b, tmp_path).read_text()
    pairs = int(re.search(r"^- (\d+) configs in both", text, re.M).group(1))
    assert f"within 1e-5 relative of b's: {pairs} runs" in text
    n = int(re.search(r"(\d+) of \d+ verdicts agree", text).group(1))
    assert n > 0 and f"{n} of {n} verdicts agree." in text and "Where they differ" not in text


def test_a_comparison_reads_each_task_by_its_own_metric(tmp_path):
    """A GAN has no test loss or test error: its runs are compared on their Fréchet distance (the task's
    metric), the classifiers' on test error, each in its own line and unit."""
    lines = (ROOT / "reports/sequence_gan/records.jsonl").read_text().splitlines()
    gan = [line for line in lines if '"gan_digits"' in line][:3]
    lstm = [line for line in lines if '"digits_lstm"' in line][:4]
    (tmp_path / "a.jsonl").write_text("\n".join([*gan, *lstm]) + "\n")
    shifted = []
    for line in gan:
        row = json.loads(line)
        row["record"]["metrics"]["fd"] += 1.5  # b's Fréchet distances 1.5 higher than a's
        shifted.append(json.dumps(row))
    (tmp_path / "b.jsonl").write_text("\n".join([*shifted, *lstm]) + "\n")
    text = _compare_runs(
        str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl"), tmp_path, study=None
    ).read_text()
    assert "of the 4 runs whose task has a test loss" in text
    assert "- Test error, a − b: median +0.00 pp, largest |a − b| 0.0 pp; paired mean 0 in every pair" in text
    assert "- fd, a − b: median -1.50 fd, largest |a − b| 1.5 fd; paired mean -1.50 fd [" in text
    assert "| gan_digits | 32 | 3 | – | no test loss | fd: -1.50 fd [" in text


def test_the_readmes_run_counts_are_the_committed_records():
    """The Status paragraph's counts are typed: each must be the number of records in the file it names."""
    readme = " ".join((ROOT / "README.md").read_text().split())

    def count(pattern: str) -> int:
        found = re.search(pattern, readme)
        assert found, pattern
        return int(found.group(1).replace(",", ""))

    def records(folder: str) -> int:
        return len((ROOT / "reports" / folder / "records.jsonl").read_text().splitlines())

    assert count(r"\*\*Status:\*\* trained: ([\d,]+) runs") == records("small_batch")
    assert count(
        r"the first protocol's ([\d,]+) runs are kept in \[reports/small_batch_cnn_val400/"
    ) == records("small_batch_cnn_val400")
