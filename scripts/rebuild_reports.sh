#!/usr/bin/env bash
# Rebuild every committed report from its committed records (reports/<study>/records.jsonl), without
# training: what `make study` does for the curve study in a fresh clone, for all of them. The tables and
# every number are a function of the records and the study description; a rerun writes the same bytes.
#
#   bash scripts/rebuild_reports.sh        # with .venv/bin (or the normbench-report on PATH)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PATH="$root/.venv/bin:$PATH"
report() {  # $1: the study's folder under reports/; $2...: normbench-report options
  local dir="$root/reports/$1"
  shift
  local notes=()
  [ -f "$dir/timings.md" ] && notes=(--notes timings.md)
  rm -rf "$dir/figures"
  (cd "$dir" && normbench-report records.jsonl --out . "$@" ${notes[@]+"${notes[@]}"})
}
(cd "$root" && rm -rf reports/example/figures \
  && normbench-report reports/example/records.jsonl --out reports/example --title "Example sweep")
report small_batch --study "$root/conf/study/small_batch.yaml"
report small_batch_v1 --study "$root/conf/study/small_batch_v1.yaml"
report small_batch_population --study "$root/conf/study/small_batch_v1.yaml"
report sequence_gan --study "$root/conf/study/sequence_gan.yaml"
