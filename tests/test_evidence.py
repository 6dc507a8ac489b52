"""A study's committed evidence (records.jsonl): packing, unpacking, resuming from it, reading it, and
the committed reports rebuilt from it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest
from helpers import QUICK, ROOT, compose_cfg

from normbench.evidence import RECORDS_FILE, finished_since, pack, parse_records_file, unpack
from normbench.experiment.identity import claim_folder
from normbench.experiment.run import execute
from normbench.report import load_runs
from normbench.results import RESULT_FILE, InvalidRecord, load_run, write_json_atomic
from normbench.schema import added, later_keys

EXAMPLE = ROOT / "reports/example" / RECORDS_FILE


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_unpack_writes_each_record_as_its_run_wrote_it_and_pack_gives_the_same_file_back(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(EXAMPLE, study / RECORDS_FILE)
    entries = _lines(EXAMPLE)
    assert unpack(study) == len(entries) == 32
    for entry in entries:
        written = study / entry["run"] / RESULT_FILE
        assert load_run(written) == entry["record"]
        again = tmp_path / "again.json"
        write_json_atomic(again, entry["record"])  # how a run writes its record
        assert written.read_bytes() == again.read_bytes()
    (study / RECORDS_FILE).unlink()
    assert pack(study) == 32
    assert (study / RECORDS_FILE).read_bytes() == EXAMPLE.read_bytes()  # sorted, compact: the same bytes
    assert unpack(study) == 0  # every folder already holds its record


def test_a_sweep_resumes_from_unpacked_records_without_training(tmp_path):
    cfg = compose_cfg("norm=groupnorm", *QUICK)
    run_dir = tmp_path / "study" / "sweeps" / "toy" / "run"
    record = execute(cfg, run_dir)
    pack(tmp_path / "study")
    shutil.rmtree(tmp_path / "study" / "sweeps")  # a fresh clone: the records file only
    assert claim_folder(cfg, run_dir, ExitStack()) is None  # nothing there: it would train
    assert unpack(tmp_path / "study") == 1
    assert claim_folder(cfg, run_dir, ExitStack()) == "skipped"
    assert load_run(run_dir) == json.loads(json.dumps(record))


def test_pack_keeps_runs_only_the_file_holds_and_a_retrained_folder_replaces_its_line(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    entries = _lines(EXAMPLE)
    (study / RECORDS_FILE).write_text("".join(json.dumps(e) + "\n" for e in entries[:5]))
    first, new = entries[0], entries[5]
    retrained = dict(first["record"], wall_time_s=123.0)
    write_json_atomic(study / first["run"] / RESULT_FILE, retrained)
    write_json_atomic(study / new["run"] / RESULT_FILE, new["record"])
    assert pack(study) == 6
    packed = {e["run"]: e["record"] for e in _lines(study / RECORDS_FILE)}
    assert packed[first["run"]]["wall_time_s"] == 123.0
    assert packed[new["run"]] == new["record"]
    assert [e["run"] for e in _lines(study / RECORDS_FILE)] == sorted(packed)


def test_unpack_never_replaces_a_record_trained_since(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(EXAMPLE, study / RECORDS_FILE)
    entry = _lines(EXAMPLE)[0]
    newer = dict(entry["record"], wall_time_s=7.0)
    write_json_atomic(study / entry["run"] / RESULT_FILE, newer)
    assert unpack(study) == 31
    assert load_run(study / entry["run"])["wall_time_s"] == 7.0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('{"run": "../outside", "record": RECORD}', "run '../outside' is not a plain relative folder"),
        ('{"run": "/abs/path", "record": RECORD}', "run '/abs/path' is not a plain relative folder"),
        ('{"run": "a/./b", "record": RECORD}', "run 'a/./b' is not a plain relative folder"),
        ('{"run": "", "record": RECORD}', "run '' is not a folder name"),
        ('{"run": "x", "record": RECORD, "extra": 1}', 'exactly the keys "run" and "record"'),
        ('{"run": "x", "record": {"status": "completed"}}', "run record lacks schema_version"),
        ('{"run": "x", "record": RECORD', "not a JSON line"),
        ('{"run": "x", "record": NaN}', "NaN is not a JSON number"),
    ],
)
def test_a_bad_line_is_named_and_unpack_writes_nothing(tmp_path, line, reason):
    study = tmp_path / "study"
    study.mkdir()
    good = EXAMPLE.read_text().splitlines()[0]
    record = json.dumps(json.loads(good)["record"])
    (study / RECORDS_FILE).write_text(good + "\n" + line.replace("RECORD", record) + "\n")
    runs, problems = parse_records_file(study / RECORDS_FILE)
    assert len(runs) == 1 and len(problems) == 1
    assert problems[0].startswith(f"{study / RECORDS_FILE}:2: ") and reason in problems[0]
    with pytest.raises(InvalidRecord, match=":2: "):
        unpack(study)
    assert sorted(p.name for p in study.iterdir()) == [RECORDS_FILE]  # not even the good line's folder
    before = (study / RECORDS_FILE).read_bytes()
    with pytest.raises(InvalidRecord):
        pack(study)  # a file that cannot be read back is never overwritten
    assert (study / RECORDS_FILE).read_bytes() == before
    # the report reads the good line and names the bad one
    records_frame = load_runs(study / RECORDS_FILE)
    assert len(records_frame) == 1


def test_count_gives_the_runs_finished_since_a_time_by_status_from_their_records(tmp_path):
    study = tmp_path / "study"
    entries = _lines(EXAMPLE)[:4]
    times = [
        "2026-12-05T10:00:00+00:00",
        "2026-12-05T11:00:00+00:00",
        "2026-12-05T12:00:00+00:00",
        "2026-12-05T09:59:59+00:00",
    ]
    statuses = ["completed", "diverged", "completed", "completed"]
    for entry, finished, status in zip(entries, times, statuses, strict=True):
        write_json_atomic(
            study / entry["run"] / RESULT_FILE, {**entry["record"], "finished_at": finished, "status": status}
        )
    since = datetime(2026, 12, 5, 10, tzinfo=timezone.utc)
    assert finished_since(study, since) == {"completed": 2, "diverged": 1, "failed": 0}
    result = subprocess.run(
        [sys.executable, "-m", "normbench.evidence", "count", str(study), "--since", str(since.timestamp())],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.split() == ["2", "1", "0"]


def test_the_command_line_says_what_is_wrong_in_one_line(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    (study / RECORDS_FILE).write_text('{"run": "../x", "record": {}}\n')
    for args, message in (
        (["unpack", str(study)], f"{study / RECORDS_FILE}:1: run '../x' is not a plain relative folder"),
        (["pack", str(tmp_path / "missing")], f"{tmp_path / 'missing'}: no such folder"),
        (["count", str(study)], "count needs --since SECONDS"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "normbench.evidence", *args], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(f"normbench.evidence: {message}")


def test_the_report_reads_a_records_file_as_it_reads_the_run_folders(tmp_path, monkeypatch):
    study = tmp_path / "study"
    study.mkdir()
    shutil.copy(EXAMPLE, study / RECORDS_FILE)
    unpack(study)
    monkeypatch.chdir(study)
    from_file = load_runs(RECORDS_FILE)
    from_folders = load_runs("sweeps")
    pd.testing.assert_frame_equal(from_file, from_folders)
    assert from_file["path"].str.startswith("sweeps/example/").all()
    with pytest.raises(FileNotFoundError, match=r"records file nothing\.jsonl does not exist"):
        load_runs("nothing.jsonl")


def test_every_committed_report_rebuilds_from_its_records_unchanged(tmp_path):
    """scripts/rebuild_reports.sh's output is what is committed: every table and sentence of each report
    is a function of its records file and its study description (figures are not compared: their bytes
    depend on matplotlib's version)."""
    env = {**os.environ, "PYTHON": sys.executable}
    script = ROOT / "scripts/rebuild_reports.sh"
    subprocess.run(
        ["bash", str(script), str(tmp_path)], env=env, capture_output=True, check=True, timeout=600
    )
    listed = ["git", "ls-files", "reports/*/report.md"]
    tracked = subprocess.run(listed, cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    reports = {Path(p).parent.name for p in tracked}
    assert {p.name for p in tmp_path.iterdir()} == reports  # every committed report, nothing else
    for name in sorted(reports):
        committed = ROOT / "reports" / name
        compared = [
            p.name
            for p in committed.iterdir()
            if p.suffix in (".md", ".csv") and (tmp_path / name / p.name).exists()
        ]
        assert {"report.md", "runs.csv", "summary.csv"} <= set(compared)
        for file in compared:
            assert (tmp_path / name / file).read_text() == (committed / file).read_text(), (
                f"reports/{name}/{file}"
            )


def _leaves(node: object, prefix: str = "") -> list[tuple[str, str]]:
    """A config's leaves as (dotted key, JSON value); an empty mapping is a leaf."""
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [(prefix, json.dumps(node, sort_keys=True))]


def _covering(configs: list[dict]) -> list[dict]:
    """The configs that hold, among all of them, every value of every key in every set of keys.

    Completing a config (``record_config``) and leaving later keys out of its identity go key by key: a
    key is filled in by its presence, converted by its value's type, dropped by its value; so a config
    whose every (key set, key, value) an earlier one already had takes no path those did not."""
    seen: set[tuple] = set()
    chosen = []
    for config in configs:
        leaves = _leaves(config)
        keys = tuple(key for key, _ in leaves)
        new = {(keys, *leaf) for leaf in leaves} - seen
        if new:
            seen |= new
            chosen.append(config)
    return chosen


def test_every_committed_record_keeps_its_config_hash_under_todays_schema():
    """A key added to the schema without ``added(before=...)`` would join every identity and change
    every committed hash: each record's config, completed by today's defaults, hashes as recorded
    (checked on configs that hold every value of every key in every key set: a tenth of them)."""
    from normbench.experiment.identity import LATER_KEYS, record_config
    from normbench.results import config_hash, identity_config
    from normbench.schema import NON_IDENTITY_KEYS

    hashes: dict[str, set[str]] = {}  # a retrained run's record has its first training's config
    for path in sorted((ROOT / "reports").glob(f"*/{RECORDS_FILE}")):
        runs, problems = parse_records_file(path)
        assert not problems
        for record in runs.values():
            hashes.setdefault(json.dumps(record["config"], sort_keys=True), set()).add(record["config_hash"])
    assert sum(map(len, hashes.values())) == len(hashes) > 2000  # one hash per config
    covering = _covering([json.loads(config) for config in hashes])
    assert 100 < len(covering) < len(hashes) / 5
    for config in covering:
        (recorded,) = hashes[json.dumps(config, sort_keys=True)]
        cfg = record_config(config)
        assert config_hash(identity_config(cfg, NON_IDENTITY_KEYS, LATER_KEYS)) == recorded


def test_the_covering_configs_hold_every_value_of_every_key_in_every_key_set():
    configs = [
        {"a": 1, "b": {"c": "x"}},
        {"a": 2, "b": {"c": "x"}},  # a new value of a
        {"a": 1, "b": {"c": "x"}},  # nothing new
        {"a": 2, "b": {"c": "y"}},  # a new value of b.c
        {"a": 2, "b": {}},  # a new key set: every leaf is new
        {"a": 1.0, "b": {"c": "x"}},  # 1.0 is not 1: another type, another conversion
    ]
    assert _covering(configs) == [configs[i] for i in (0, 1, 3, 4, 5)]


@dataclass
class Inner:
    old: int = 1
    new: float = field(default=0.1, metadata=added(before=0))


@dataclass
class Outer:
    inner: Inner = field(default_factory=Inner)
    flag: bool = field(default=True, metadata=added(before=False))


def test_later_keys_come_from_the_schema_marks():
    from normbench.experiment.identity import LATER_KEYS

    assert later_keys(Outer) == {"inner.new": 0, "flag": False}
    assert LATER_KEYS["data.val_size"] == 0 and LATER_KEYS["task.model.embed"] == 0
    assert LATER_KEYS["norm.positions"] == 0  # a plugin option, listed in normbench.experiment.identity


def test_no_run_folder_is_version_controlled():
    tracked = subprocess.run(
        ["git", "ls-files", "reports"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    assert tracked and not [p for p in tracked if p.endswith(RESULT_FILE) or "/sweeps/" in p]
    assert len(tracked) < 200  # reports, figures and packed records; one file per run would be thousands


def test_a_record_without_a_later_key_reads_back_with_its_old_value_not_todays_default(tmp_path):
    from normbench.experiment.build import load_model
    from normbench.experiment.identity import record_config

    cfg = compose_cfg("data.val_size=0", "data.mnist1d_val_samples=200", "train.save_model=true", *QUICK)
    record = execute(cfg, tmp_path / "run")
    assert "val_size" not in record["config"]["data"]  # at its old value (0): out of the identity
    assert record_config(record["config"]).data.val_size == 0  # not the schema's default, 0.1
    assert compose_cfg().data.val_size == 0.1
    # the schema is built once and each record completed on a copy: one record's values stay its own
    changed = record_config({**record["config"], "seed": 7, "data": {"val_size": 0.25}})
    changed.batch_size = 3
    again = record_config(record["config"])
    assert (changed.seed, changed.data.val_size, again.seed, again.data.val_size) == (7, 0.25, 0, 0)
    load_model(tmp_path / "run")  # rebuilt from its record: a 0.1 split beside the drawn one is refused
