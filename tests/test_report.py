"""Reports from a real small sweep, and from hand-made records (corrupt, partial, duplicated)."""

from __future__ import annotations

import html
import importlib
import json
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pandas as pd
import pytest
from helpers import QUICK_EVAL, ROOT, normbench_run

from normbench.report import figures, load_runs
from normbench.report.build import build_report
from normbench.report.cli import main as report_main
from normbench.report.tables import summarize, with_reference_delta

GRID = ("norm=batchnorm,groupnorm", "batch_size=4,8", "seed=0,1")


@pytest.fixture(scope="module")
def small_sweep(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    proc = normbench_run(
        "-m",
        *GRID,
        "train.budget=steps",
        "train.steps=6",
        "train.history_points=3",
        *QUICK_EVAL,
        f"sweep.root={root}",
        "hydra/launcher=joblib",
        cwd=root,
    )
    assert proc.returncode == 0, proc.stderr
    return root / "default"


def test_report_from_real_sweep(small_sweep, tmp_path):
    out = tmp_path / "report"
    report_main([str(small_sweep), "--out", str(out), "--reference-batch", "8"])
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 8
    for column in (
        "task",
        "norm",
        "batch_size",
        "seed",
        "status",
        "test_error",
        "test_loss",
        "train_error",
        "train_loss",
        "steps",
        "lr",
        "wall_time_s",
        "config_hash",
    ):
        assert column in runs.columns
    assert (runs["status"] == "completed").all() and (runs["steps"] == 6).all()
    summary = pd.read_csv(out / "summary.csv")
    assert sorted(zip(summary["norm"], summary["batch_size"], strict=True)) == [
        ("batchnorm", 4),
        ("batchnorm", 8),
        ("groupnorm", 4),
        ("groupnorm", 8),
    ]
    assert (summary["n"] == 2).all() and not summary["incomplete"].any()
    for cell in summary.itertuples():
        errors = runs[(runs["norm"] == cell.norm) & (runs["batch_size"] == cell.batch_size)]["test_error"]
        assert cell.mean == pytest.approx(errors.mean(), abs=1e-6)
        assert cell.std == pytest.approx(errors.std(), abs=1e-6)
        ref = summary[(summary["norm"] == cell.norm) & (summary["batch_size"] == 8)]["mean"].item()
        assert cell.delta_vs_ref == pytest.approx(cell.mean - ref, abs=1e-6)
    text = (out / "report.md").read_text()
    assert "8 runs (8 completed, 0 diverged, 0 failed)" in text
    from importlib.metadata import version

    assert (
        f"Built with numpy {version('numpy')}, pandas {version('pandas')}, scipy {version('scipy')}" in text
    )
    assert re.search(r"\|\s+batchnorm \|\s+\d+\.\d ± \d+\.\d \|\s+\d+\.\d ± \d+\.\d \|", text)
    assert re.search(r"\|\s+groupnorm \|\s+\+0\.0 \|\s+[+-]\d+\.\d \|", text)  # Δ vs batch 8, 8 first
    images = sorted(out.glob("figures/*"))
    assert {p.name.split("_")[0] for p in images} == {"error", "delta", "curves"}
    for svg in images:  # each figure once, as SVG
        assert svg.suffix == ".svg" and svg.name in text  # every figure is embedded in report.md
        root = ET.parse(svg).getroot()  # well-formed
        assert float(root.get("height").removesuffix("pt")) > 100 and root.findall(".//{*}path")


def test_same_inputs_give_byte_identical_tables(small_sweep, tmp_path):
    build_report([small_sweep], tmp_path / "a")
    build_report([small_sweep], tmp_path / "b")
    for name in ("runs.csv", "summary.csv", "report.md"):
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "")
        b = (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "")
        assert a == b


def test_a_cell_is_incomplete_below_the_usual_seed_count_of_its_task_not_below_the_fullest():
    counts = {"batchnorm": 5, "groupnorm": 10, "layernorm": 5, "identity": 3, "batchrenorm": 5}
    runs = pd.DataFrame(
        [
            {"task": "t", "norm": norm, "batch_size": 32, "seed": s, "status": "completed", "test_error": 0.1}
            for norm, n in counts.items()
            for s in range(n)
        ]
    )
    summary = summarize(runs).set_index("norm")
    assert summary["incomplete"].to_dict() == {norm: norm == "identity" for norm in sorted(counts)}


def test_missing_seed_is_marked_and_bad_files_are_named(small_sweep, tmp_path, caplog):
    copy = tmp_path / "sweep"
    shutil.copytree(small_sweep, copy)
    runs = load_runs(copy)
    victim = runs[(runs["norm"] == "groupnorm") & (runs["batch_size"] == 4) & (runs["seed"] == 1)][
        "path"
    ].item()
    (Path(victim) / "result.json").write_text('{"schema_version": 1, "status": "compl')  # partial write
    (copy / "stray").mkdir()
    (copy / "stray" / "result.json").write_text("[1, 2]")
    with caplog.at_level("WARNING"):
        runs = load_runs(copy)
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert str(Path(victim) / "result.json") in messages and str(copy / "stray" / "result.json") in messages
    assert len(runs) == 7
    summary = summarize(runs)
    cell = summary[(summary["norm"] == "groupnorm") & (summary["batch_size"] == 4)]
    assert cell["n"].item() == 1 and cell["incomplete"].item()
    assert summary["incomplete"].sum() == 1
    report = build_report([copy], tmp_path / "out").read_text()
    assert "(n=1)*" in report and "stray" in report


def _record(h: str, status: str, finished: str, error: float | None, seed: int = 0) -> dict:
    """A schema-1 record (with the ``choices`` that schema carried), as older sweeps wrote them."""
    return {
        "schema_version": 1,
        "status": status,
        "config_hash": h,
        "choices": {"task": "t", "norm": "batchnorm", "batch_size": 32, "seed": seed, "experiment": "x"},
        "config": {
            "task": {"name": "t"},
            "norm": {"name": "batchnorm"},
            "batch_size": 32,
            "seed": seed,
            "train": {"budget": "epochs"},
            "data": {"sampler": "iid"},
        },
        "metrics": {} if error is None else {"test_error": error},
        "finished_at": finished,
    }


def _write(path: Path, record: dict) -> None:
    path.mkdir(parents=True)
    (path / "result.json").write_text(json.dumps(record))


def test_duplicate_hash_keeps_completed_then_newest(tmp_path):
    _write(tmp_path / "a/x", _record("h1", "failed", "2026-01-03", None))
    _write(tmp_path / "b/x", _record("h1", "completed", "2026-01-01", 0.3))
    _write(tmp_path / "c/x", _record("h1", "completed", "2026-01-02", 0.2))
    _write(tmp_path / "c/y", _record("h2", "diverged", "2026-01-02", None, seed=1))
    runs = load_runs(tmp_path / "a", tmp_path / "b", tmp_path / "c")
    assert len(runs) == 2
    kept = runs[runs["config_hash"] == "h1"].iloc[0]
    assert kept["status"] == "completed" and kept["test_error"] == 0.2
    summary = with_reference_delta(summarize(runs))
    row = summary.iloc[0]
    assert row["runs"] == 2 and row["n"] == 1 and row["n_diverged"] == 1 and row["delta_vs_ref"] == 0


def test_a_failed_runs_error_with_a_pipe_stays_in_its_cell(tmp_path):
    """The pipe split the problems table's row: the error cut in two, its path under no header."""
    failed = _record("h1", "failed", "2026-01-03", None) | {
        "error": "TypeError: unsupported operand for |: 'int'"
    }
    _write(tmp_path / "sweep/x", failed)
    _write(tmp_path / "sweep/y", _record("h2", "completed", "2026-01-02", 0.2, seed=1))
    report = build_report([tmp_path / "sweep"], tmp_path / "out", html=True)
    table = report.read_text().split("Runs that diverged or failed:")[1].strip().split("\n\n")[0].splitlines()
    cells = [re.split(r"(?<!\\)\|", line.strip())[1:-1] for line in table]
    assert len(cells) == 3 and len(cells[2]) == len(cells[0]) == 7  # header, rule, the failed run
    assert cells[2][5].strip() == r"TypeError: unsupported operand for \|: 'int'"
    page = (tmp_path / "out" / "report.html").read_text()
    row = next(r for r in page.split("<tr>") if "unsupported operand" in r).split("</tr>")[0]
    assert row.count("<td") == 7 and "unsupported operand for |: 'int'" in html.unescape(row)


def test_report_cli_errors_name_the_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        report_main([str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert f"sweep folder {tmp_path / 'nope'} does not exist" in capsys.readouterr().err


def test_report_states_what_the_layers_report_such_as_channels_per_group(tmp_path):
    from helpers import QUICK, compose_cfg

    from normbench.experiment.run import execute

    record = execute(compose_cfg("task=digits_cnn", "norm=groupnorm", *QUICK), tmp_path / "sweep" / "run")
    assert set(v["channels_per_group"] for v in record["layers"].values()) == {2.0}  # 32 channels, 16 groups
    report = build_report([tmp_path / "sweep"], tmp_path / "out").read_text()
    section = report.split("## What the norm layers report")[1].split("\n## ")[0]
    assert "### digits_cnn, groupnorm (1 runs)" in section and "channels_per_group" in section
    rows = [line for line in section.splitlines() if line.startswith("|") and "features" in line]
    assert rows and all(
        float(line.strip("| ").split("|")[-1]) == 2.0 for line in rows
    )  # one row per norm layer


def test_learning_curves_draw_each_cells_mean_over_seeds(tmp_path, monkeypatch):
    def history(*errors):
        return [{"step": 10 * i, "epoch": 0.5 * i, "test_error": e} for i, e in enumerate(errors, 1)]

    unscored = [*history(0.9), {"step": 20, "epoch": 1.0, "train_loss": 1.0}]  # no test_error at 1: left out
    runs = pd.DataFrame(
        [
            (8, "batchnorm", 0, history(0.5, 0.25)),
            (8, "batchnorm", 1, history(0.3, None)),  # a missing value: the other seed's alone
            (8, "batchnorm", 2, unscored),
            (8, "groupnorm", 0, history(0.4, 0.2)),
            (32, "batchnorm", 0, history(0.1, 0.05)),
            (32, "groupnorm", 0, []),
        ],
        columns=["batch_size", "norm", "seed", "history"],
    )
    drawn = {}
    monkeypatch.setattr(figures, "finish", lambda fig, axes, *args, **kwargs: drawn.setdefault("axes", axes))
    figures.learning_curves(runs, tmp_path / "curves")
    points = {
        (ax.get_title(), line.get_label(), x): y
        for ax in drawn["axes"]
        for line in ax.get_lines()
        for x, y in line.get_xydata()
    }
    assert points == pytest.approx(
        {
            ("batch 8", "batchnorm", 0.5): 100 * (0.5 + 0.3) / 2,
            ("batch 8", "batchnorm", 1.0): 25.0,
            ("batch 8", "groupnorm", 0.5): 40.0,
            ("batch 8", "groupnorm", 1.0): 20.0,
            ("batch 32", "batchnorm", 0.5): 10.0,
            ("batch 32", "batchnorm", 1.0): 5.0,
        }
    )
    figures.plt.close(drawn["axes"][0].figure)


def test_report_benchmark_refuses_a_bad_baseline_before_any_work(tmp_path):
    out = tmp_path / "sweep.md"
    script = [sys.executable, "scripts/bench_sweep.py", "--skip-sweep", "--out", str(out)]
    proc = subprocess.run([*script, "--baseline", "no-such-rev"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        f"bench_sweep.py: error: argument --baseline: no-such-rev: not a commit of this repository ({ROOT})"
    )
    proc = subprocess.run([*script, "--rounds", "0"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and not out.exists()
    assert proc.stderr.strip().splitlines()[-1] == (
        "bench_sweep.py: error: argument --rounds: 0: must be an integer >= 1"
    )


def _run_script(argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """``python scripts/X.py ARGS`` (``argv``) run in this process until it exits: its exit status and
    stderr. torch is imported here already, and a fresh process's start would be most of such a test."""
    import runpy

    monkeypatch.chdir(ROOT)
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(argv[0], run_name="__main__")
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("script", "option", "value"),
    [
        ("host_cost", "--rounds", "0"),
        ("host_cost", "--baseline", "no-such-rev"),
        ("bench_norms", "--inner", "-3"),
        ("bench_train", "--steps", "0"),
        ("bench_population", "--rounds", "1.5"),
        ("bench_population", "--members", "0"),
        ("bench_population", "--batch-sizes", "-2"),
        ("check_capture", "--steps", "0"),
        ("bench_norms", "--threads", "0"),
        ("bench_train", "--batch-sizes", "0"),
        ("bench_gan", "--rounds", "0"),
        ("profile_population", "--steps", "0"),
        ("bench_population_host", "--members", "0"),
        ("bench_optimizer", "--members", "0"),
        ("bench_compose", "--rounds", "0"),
    ],
)
def test_benchmark_scripts_refuse_a_bad_count_or_revision_before_any_work(
    tmp_path, monkeypatch, capsys, script, option, value
):
    """A zero count used to end a finished benchmark in a traceback (no median of nothing). Each script
    runs in this process, as ``python scripts/SCRIPT.py`` would run it (torch is imported already: a
    fresh process's start would be most of the test); host_cost.py, which sets TRITON_INTERPRET for
    the process, in its own."""
    out = tmp_path / "bench.md"
    argv = [f"scripts/{script}.py", option, value, "--out", str(out)]
    if script == "host_cost":
        proc = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True)
        status, stderr = proc.returncode, proc.stderr
    else:
        status, stderr = _run_script(argv, monkeypatch, capsys)
    assert status == 2 and not out.exists()
    reason = (
        f"not a commit of this repository ({ROOT})" if option == "--baseline" else "must be an integer >= 1"
    )
    assert stderr.strip().splitlines()[-1] == f"{script}.py: error: argument {option}: {value}: {reason}"


DEVICE_SCRIPTS = ["bench_norms", "bench_population", "bench_population_eval", "bench_train", "check_capture",
                  "check_cuda", "profile_population", "check_convert_torchvision"]  # fmt: skip


@pytest.mark.parametrize("script", DEVICE_SCRIPTS)
@pytest.mark.parametrize(
    "value, reason",
    [("gpu", "must be one of auto, cpu, cuda or cuda:N"), ("cuda:99", "this machine has ")],
)
def test_scripts_refuse_a_device_this_machine_lacks_in_one_line(
    tmp_path, monkeypatch, capsys, script, value, reason
):
    """torch's 'Torch not compiled with CUDA enabled' assertion or a traceback before, after imports."""
    out = tmp_path / "bench.md"
    status, stderr = _run_script(
        [f"scripts/{script}.py", "--device", value, "--out", str(out)], monkeypatch, capsys
    )
    assert status == 2 and not out.exists()
    assert (
        stderr.strip()
        .splitlines()[-1]
        .startswith(f"{script}.py: error: argument --device: {value}: {reason}")
    )


@pytest.mark.parametrize(
    ("script", "args", "message"),
    [
        ("bench_gan", ["--task", "gan_cifar"], "argument --task: invalid choice: 'gan_cifar' (choose from 'gan_digits', 'gan_mnist1d')"),
        ("bench_study", ["--presets", "curve_mpl"], "argument --presets: invalid choice: 'curve_mpl' (choose from 'cifar_study', "),
        ("bench_study", ["--norms", "batchnrom"], "argument --norms: invalid choice: 'batchnrom' (choose from 'batchnorm', "),
        ("bench_study", ["--seeds", "0,-1"], "argument --seeds: 0,-1: must be seeds, integers >= 0 separated by commas (0,1,2)"),
        ("check_capture", ["--tasks", "mnist1d"], "argument --tasks: invalid choice: 'mnist1d' (choose from 'cifar100_resnet20', "),
        ("check_capture", ["--norms", "bn"], "argument --norms: invalid choice: 'bn' (choose from 'batchnorm', "),
        ("bench_norms", ["--from-json", "no-such.json"], "argument --from-json: no-such.json: No such file or directory"),
        ("bench_norms", ["--from-json", "reports/bench/norms.md"], "argument --from-json: reports/bench/norms.md: not JSON (Expecting value"),
        ("bench_norms", ["--from-json", "reports/example/records.jsonl"], "argument --from-json: reports/example/records.jsonl: not JSON (Extra data"),
        ("profile_norm", ["--shape", "2", "8"], "--shape 2 8: must be 4 sizes, N C H W"),
    ],
)  # fmt: skip
def test_benchmark_scripts_refuse_an_unknown_name_or_file_before_any_work(
    tmp_path, monkeypatch, capsys, script, args, message
):
    """Each was a traceback once the benchmark had started or ended (Hydra's, a subprocess's after its
    first sweep's start-up, json's after the measurement)."""
    out = tmp_path / "bench.md"
    argv = [f"scripts/{script}.py", *args, *([] if script == "profile_norm" else ["--out", str(out)])]
    status, stderr = _run_script(argv, monkeypatch, capsys)
    assert status == 2 and not out.exists()
    assert stderr.strip().splitlines()[-1].startswith(f"{script}.py: error: {message}")


def test_a_saved_table_of_another_shape_is_refused_naming_what_it_needs(tmp_path, monkeypatch, capsys):
    saved = tmp_path / "rows.json"
    saved.write_text('{"rows": []}')
    status, stderr = _run_script(["scripts/bench_norms.py", "--from-json", str(saved)], monkeypatch, capsys)
    assert status == 2 and stderr.strip().splitlines()[-1] == (
        f"bench_norms.py: error: argument --from-json: {saved}: not the JSON bench_norms.py --device cuda "
        "saves (an object with device, torch, rounds, inner, rows)"
    )


def test_the_study_benchmark_ends_in_one_line_when_a_sweep_fails(tmp_path, monkeypatch, capsys):
    """A bad --overrides value: normbench-run's own line, then the benchmark's (a traceback before)."""
    out = tmp_path / "bench.md"
    argv = ["scripts/bench_study.py", "--presets", "curve_mlp", "--norms", "batchnorm", "--jobs", "1",
            "--overrides", "batch_size=-1", "--out", str(out)]  # fmt: skip
    status, _ = _run_script(argv, monkeypatch, capsys)
    assert status == (
        "bench_study.py: experiment=curve_mlp hydra/launcher=population hydra.launcher.n_jobs=1 "
        "sweep.root=sweeps norm=batchnorm seed=0,1,2,3,4 batch_size=-1: exit status 2; nothing written"
    )
    assert not out.exists()


OUT_SCRIPTS = [*DEVICE_SCRIPTS, "bench_compose", "bench_gan", "bench_optimizer", "bench_population_host",
               "bench_study", "bench_sweep", "check_diagnose_cuda"]  # fmt: skip


@pytest.mark.parametrize("script", OUT_SCRIPTS)
def test_scripts_refuse_an_out_file_they_could_not_write_before_any_work(
    tmp_path, monkeypatch, capsys, script
):
    """A benchmark measured for minutes (a GPU loan's) and then lost in a traceback at its last line:
    an --out under a file, or a folder, is refused when the arguments are parsed."""
    blocking = tmp_path / "results.md"
    blocking.write_text("earlier results\n")
    for out, reason in [(blocking / "bench.md", f"{blocking} is a file, not a folder"),
                        (tmp_path, "is a folder; give the file to write")]:  # fmt: skip
        status, stderr = _run_script([f"scripts/{script}.py", "--out", str(out)], monkeypatch, capsys)
        assert status == 2, stderr
        assert stderr.strip().splitlines()[-1] == f"{script}.py: error: argument --out: {out}: {reason}"
    assert blocking.read_text() == "earlier results\n" and sorted(tmp_path.iterdir()) == [blocking]


@pytest.mark.parametrize("script", ["bench_population", "profile_population", "bench_optimizer"])
def test_population_benchmarks_refuse_an_unknown_task_naming_it_before_any_work(
    tmp_path, monkeypatch, capsys, script
):
    out = tmp_path / "bench.md"
    argv = [f"scripts/{script}.py", "--tasks", "mnist1d_mlpp", "--out", str(out)]
    status, stderr = _run_script(argv, monkeypatch, capsys)
    assert status == 2 and not out.exists()
    last = stderr.strip().splitlines()[-1]
    assert last.startswith(
        f"{script}.py: error: argument --tasks: invalid choice: 'mnist1d_mlpp' (choose from"
    )
    assert "'mnist1d_mlp'" in last


@pytest.mark.parametrize("script", ["bench_population", "profile_population"])
def test_population_benchmarks_refuse_a_task_with_its_own_loop_before_any_work(
    tmp_path, monkeypatch, capsys, script
):
    out = tmp_path / "bench.md"
    argv = [
        f"scripts/{script}.py",
        "--tasks",
        "mnist1d_mlp",
        "gan_digits",
        "--device",
        "cpu",
        "--out",
        str(out),
    ]
    status, stderr = _run_script(argv, monkeypatch, capsys)
    assert status == 2 and not out.exists()
    assert stderr.strip().splitlines()[-1] == (
        f"{script}.py: error: --tasks gan_digits: trains with a loop of its own, not fit_population's; "
        "this benchmark does not time it"
    )


def test_a_population_benchmarks_reproduce_line_names_the_report_it_wrote(monkeypatch):
    """Rerunning the reproduce line of a benchmark written to another report (the recurrent one,
    reports/bench/population_seq_lstm.md) used to overwrite the default reports/bench/population.md."""
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    bench = importlib.import_module("bench_population")
    reports = ROOT / "reports/bench"
    assert bench.out_option(reports / "population.md", "cpu") == ""
    assert bench.out_option(reports / "population_cuda.md", "cuda") == ""
    assert bench.out_option(reports / "population.md", "cuda") == " --out reports/bench/population.md"
    assert (
        bench.out_option(reports / "population_seq_lstm.md", "cpu")
        == " --out reports/bench/population_seq_lstm.md"
    )
    assert bench.out_option(Path("/tmp/bench.md"), "cpu") == " --out FILE"
    line = next(x for x in (reports / "population_seq_lstm.md").read_text().splitlines() if "Reproduce" in x)
    assert line.endswith(" --out reports/bench/population_seq_lstm.md`")


@pytest.mark.parametrize("value", ["-3", "0", "two"])
def test_report_refuses_a_reference_batch_that_is_no_batch_size(tmp_path, value, monkeypatch, capsys):
    from normbench.cli import report

    out = tmp_path / "out"
    argv = ["normbench-report", str(tmp_path), "--out", str(out), "--reference-batch", value]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exited:
        report()
    assert exited.value.code == 2 and not out.exists()
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"normbench-report: error: argument --reference-batch: {value}: must be a batch size, an integer >= 1"
    )


def test_report_refuses_an_out_folder_notes_or_title_it_cannot_use_in_one_line(tmp_path, capsys):
    """Was errno's text naming no option (``[Errno 17] File exists``, ``[Errno 2] No such file or
    directory: 'none.md'``), and ``--out ''`` wrote the report into the current folder."""
    from normbench.report.cli import main

    taken = tmp_path / "taken.md"
    taken.write_text("a user's file\n")
    example = str(ROOT / "reports/example/records.jsonl")
    (tmp_path / "notes.md").write_bytes(b"\xff\xfe")
    for option, value, reason in [("--out", taken, "is a file; give a folder"),
                                  ("--out", taken / "report", f"{taken} is a file, not a folder"),
                                  ("--out", "", "an empty path"),
                                  ("--notes", tmp_path / "none.md", "No such file or directory"),
                                  ("--notes", tmp_path / "notes.md", "not text (invalid start byte at byte 0)"),
                                  ("--title", " ", "must be one line of text (not empty)"),  # was '# ' alone
                                  ("--title", "a\n## b", "must be one line of text (not empty)")]:  # fmt: skip
        arguments = [example, "--out", str(tmp_path / "report"), option, str(value)]
        with pytest.raises(SystemExit) as exit_info:
            main(arguments)
        shown = repr(value) if value == "" or option == "--title" else value
        assert exit_info.value.code == 2
        assert capsys.readouterr().err.strip().splitlines()[-1] == (
            f"normbench-report: error: argument {option}: {shown}: {reason}"
        )
    (tmp_path / "notes.md").unlink()
    assert taken.read_text() == "a user's file\n" and sorted(tmp_path.iterdir()) == [taken]


def test_a_folder_with_a_users_own_figures_or_report_is_refused_and_left_as_it_was(tmp_path, capsys):
    """A report replaces figures/ whole and report.md, runs.csv, ... in its folder: given a paper's folder
    (its own figures/ and report.md) it deleted them."""
    example = str(ROOT / "reports/example/records.jsonl")
    paper = tmp_path / "paper"
    (paper / "figures").mkdir(parents=True)
    (paper / "figures" / "fig1.pdf").write_text("a user's figure")
    (paper / "report.md").write_text("# my draft\n")
    with pytest.raises(SystemExit) as exit_info:
        report_main([example, "--out", str(paper)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"normbench-report: error: {paper}: holds figures, report.md, which a report there would replace, "
        "and no report of normbench-report; give a new or empty folder, or one of its earlier reports"
    ]
    assert sorted(p.relative_to(paper).as_posix() for p in paper.rglob("*")) == [
        "figures",
        "figures/fig1.pdf",
        "report.md",
    ]
    assert (paper / "report.md").read_text() == "# my draft\n"


def test_a_report_goes_into_its_own_earlier_folder_or_one_a_killed_report_left_halfway(tmp_path):
    example = ROOT / "reports/example/records.jsonl"
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("kept")  # not a report's output: neither refused nor touched
    build_report([example], out)
    build_report([example], out)  # its own earlier report: rebuilt
    halfway = tmp_path / "halfway"  # killed after moving its figures in, before its report.md
    shutil.copytree(out / "figures", halfway / "figures")
    (halfway / ".normbench-report-publishing").touch()
    build_report([example], halfway)
    assert (out / "notes.txt").read_text() == "kept"
    assert sorted(p.name for p in halfway.iterdir()) == sorted(
        p.name for p in out.iterdir() if p.name != "notes.txt"
    )


def test_a_folder_of_packed_records_names_the_file_to_give(tmp_path):
    """A study's report folder holds records.jsonl and no result.json: the error said only that nothing
    was found there."""
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "records.jsonl").write_text((ROOT / "reports/example/records.jsonl").read_text())
    with pytest.raises(ValueError) as info:
        build_report([folder], tmp_path / "out")
    assert str(info.value) == (
        f"no valid run records (result.json) found under {folder} (a study's packed records are read from "
        f"the file itself: {folder / 'records.jsonl'})"
    )
    assert build_report([folder / "records.jsonl"], tmp_path / "out").is_file()


def test_a_reference_batch_the_runs_lack_is_refused_and_without_one_32_or_the_largest_is_used(tmp_path):
    """A change against a batch size nobody trained would be a table of dashes: refused, naming the
    batch sizes there are; left out, it is 32 (Wu & He 2018's) or, where the runs stop below, their
    largest."""
    from normbench.report.build import build_report

    example = Path(__file__).resolve().parents[1] / "reports/example/records.jsonl"
    lines = example.read_text().splitlines()
    small = tmp_path / "small.jsonl"  # the example without its batch-32 runs
    small.write_text("".join(f"{x}\n" for x in lines if json.loads(x)["record"]["config"]["batch_size"] < 32))
    command = [str(Path(sys.executable).parent / "normbench-report"), "--out", str(tmp_path / "out")]
    proc = subprocess.run([*command, str(example), "--reference-batch", "7"], capture_output=True, text=True)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr.strip() == (
        "normbench-report: error: reference batch 7: not a batch size of these runs (theirs: 4, 8, 16, 32)"
    )
    for records, expected in ((example, 32), (small, 16)):
        summary = pd.read_csv(build_report([records], tmp_path / records.stem).with_name("summary.csv"))
        at_reference = summary[summary["batch_size"] == expected]
        assert len(at_reference) and (at_reference["delta_vs_ref"] == 0).all()
        assert summary["delta_vs_ref"].notna().all()


def test_the_html_report_is_one_file_with_every_figure_embedded(tmp_path):
    import base64
    import re

    from normbench.report.build import build_report

    md = build_report(
        [Path(__file__).resolve().parents[1] / "reports/example/records.jsonl"], tmp_path, html=True
    )
    page = (tmp_path / "report.html").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.svg)\)", md.read_text())
    embedded = re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    assert linked and len(embedded) == len(linked)
    assert [base64.b64decode(e) for e in embedded] == [(tmp_path / p).read_bytes() for p in linked]
    tables = re.findall(r"^\|(?:\s*:?-+:?\s*\|)+\s*$", md.read_text(), re.M)  # a separator row per table
    assert 'src="figures/' not in page and page.count("<table>") == len(tables) > 0


def test_the_report_reads_records_without_importing_torch_or_hydra():
    code = (
        "import sys, normbench.report, normbench.report.build, normbench.report.study, normbench.report.rounds\n"
        "import normbench.evidence, normbench.experiment.identity\n"
        "print(sorted(m for m in ('torch', 'hydra') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_capture_check_writes_its_rows_so_far_and_the_cases_still_to_run(tmp_path, monkeypatch):
    """scripts/check_capture.py (CUDA only) writes its table after every case, so a check stopped at its
    time limit keeps what it compared; its reproduce line carries the options it ran with."""
    import argparse

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    check = importlib.import_module("check_capture")
    monkeypatch.setattr(check.torch.cuda, "get_device_name", lambda device: "GPU")
    args = argparse.Namespace(tasks=["mnist1d_mlp"], members=[1, 3], steps=60, out=tmp_path / "capture.md")
    rows = ["| mnist1d_mlp | batchnorm | sgd | 3 | wide | c c d | 0.00e+00 | 0.00e+00 | yes |"]
    check.write_report(args, check.Runtime(check.torch.device("cpu")), rows, failures=0, planned=8)
    text = args.out.read_text()
    assert rows[0] in text and text.rstrip().endswith("1 of 1 agree; 7 of the 8 cases not run yet.")
    assert (
        "`PYTHONPATH=. python scripts/check_capture.py --tasks mnist1d_mlp --members 1 3 --steps 60 --out FILE`"
        in text
    )


@pytest.mark.filterwarnings("ignore:CUDA is not available")  # its bf16 autocast, here on CPU tensors
def test_the_cuda_norm_benchmark_hands_on_its_rows_after_each_shape_and_precision(monkeypatch):
    """bench_norms.py --device cuda writes its table after each shape and precision (a run stopped at
    its limit keeps them): run here on CPU tensors with its CUDA timer faked."""
    from normbench import available_norms

    monkeypatch.syspath_prepend(str(ROOT / "scripts"))
    bench = importlib.import_module("bench_norms")
    monkeypatch.setattr(bench, "CUDA_SHAPES", [(2, 4, 3, 3), (2, 8, 2, 2)])
    monkeypatch.setattr(bench, "time_interleaved", lambda cases, *_: {key: [1.0, 1.1] for key in cases})
    handed: list[list[tuple]] = []
    bench.bench_cuda(
        1, 1, bench.torch.device("cpu"), lambda rows: handed.append([tuple(r["shape"]) for r in rows])
    )
    n = len(available_norms())
    assert [len(rows) for rows in handed] == [n, 2 * n, 3 * n, 4 * n]
    assert handed[-1][: 2 * n] == [(2, 4, 3, 3)] * 2 * n and handed[-1][2 * n :] == [(2, 8, 2, 2)] * 2 * n
