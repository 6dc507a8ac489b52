#!/usr/bin/env bash
# Rebuild every committed report from its committed records (reports/<study>/records.jsonl), without
# training: what `make study` does for the curve study in a fresh clone, for all of them. The tables and
# every number are a function of the records and the study description; a rerun writes the same bytes.
#
#   bash scripts/rebuild_reports.sh            # in place, into reports/<study>/
#   bash scripts/rebuild_reports.sh OUT_ROOT   # into OUT_ROOT/<study>/ (tests/test_evidence.py compares)
#
# PYTHON (default .venv/bin/python) is the interpreter that has normbench installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
out_root="$(mkdir -p "${1:-$root/reports}" && cd "${1:-$root/reports}" && pwd)"
normbench_report() { "$python" -c "from normbench.report.cli import main; main()" "$@"; }
report() {  # $1: the study's folder under reports/ (its records are read from inside it); $2...: options
  local dir="$root/reports/$1" out="$out_root/$1"
  shift
  local notes=()
  [ -f "$dir/timings.md" ] && notes=(--notes timings.md)
  rm -rf "$out/figures"
  (cd "$dir" && normbench_report records.jsonl --out "$out" "$@" ${notes[@]+"${notes[@]}"})
}
rm -rf "$out_root/example/figures"  # the example names its records from the project root
(cd "$root" && normbench_report reports/example/records.jsonl --out "$out_root/example" --title "Example sweep")
report small_batch --study "$root/conf/study/small_batch.yaml"
report small_batch_v1 --study "$root/conf/study/small_batch_v1.yaml"
report small_batch_population --study "$root/conf/study/small_batch_v1.yaml"
report sequence_gan_v1 --study "$root/conf/study/sequence_gan_v1.yaml"
# the recurrent/GAN study's second design, once trained (scripts/small_batch_study.sh --study ...)
[ ! -f "$root/reports/sequence_gan/records.jsonl" ] || report sequence_gan --study "$root/conf/study/sequence_gan.yaml"
