#!/usr/bin/env bash
# A study: the sweeps its description lists (conf/study/small_batch.yaml by default; resumable), then
# its report with the description's claims.
#
#   scripts/small_batch_study.sh            # full study into reports/small_batch/ (about an hour, 2 cores)
#   scripts/small_batch_study.sh --smoke    # reduced grid, same code, into reports/small_batch_smoke/
#   scripts/small_batch_study.sh --large    # 10 seeds, batch sizes 2-128 for every norm, into
#                                           # reports/small_batch_large/ (for a GPU: add -- runtime.device=cuda)
#   scripts/small_batch_study.sh --study conf/study/sequence_gan.yaml  # another study, into reports/sequence_gan/
#   scripts/small_batch_study.sh --out DIR  # another folder
#   scripts/small_batch_study.sh --population  # each sweep's runs that differ only in seed/lr/... trained
#                                           # as vectorized populations (hydra/launcher=population)
#   scripts/small_batch_study.sh -- KEY=VALUE ...  # Hydra overrides added to every sweep
#
# Rerunning resumes: finished runs (their result.json under DIR/sweeps/) are skipped without being
# launched. Each invocation that trains something appends its wall time to DIR/timings.md, which the
# report includes; the sweeps run from inside DIR, so no file records an absolute path.
set -euo pipefail

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; }
smoke=0
population=0
large=0
study=""
out=""
overrides=()
jobs="${NORMBENCH_JOBS:-2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --large) large=1 ;;
    --population) population=1 ;;
    --study) [ $# -ge 2 ] || { echo "small_batch_study.sh: --study needs a file" >&2; exit 2; }; study="$2"; shift ;;
    --) shift; overrides=("$@"); break ;;
    --out) [ $# -ge 2 ] || { echo "small_batch_study.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift ;;
    --jobs) [ $# -ge 2 ] || { echo "small_batch_study.sh: --jobs needs a number" >&2; exit 2; }; jobs="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "small_batch_study.sh: unknown argument '$1' (allowed: --smoke, --large, --population, --study FILE, --out DIR, --jobs N, -- OVERRIDES)" >&2; exit 2 ;;
  esac
  shift
done
[ "$smoke$large" != 11 ] || { echo "small_batch_study.sh: --smoke and --large exclude each other" >&2; exit 2; }
case "$jobs" in ''|*[!0-9]*|0) echo "small_batch_study.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
study="${study:-$root/conf/study/small_batch.yaml}"
[ -f "$study" ] || { echo "small_batch_study.sh: --study $study: no such file (the studies: $root/conf/study/*.yaml)" >&2; exit 2; }
study="$(cd "$(dirname "$study")" && pwd)/$(basename "$study")"
command -v normbench-run >/dev/null || { echo "small_batch_study.sh: normbench-run not found; run 'make setup' and use .venv/bin on PATH (or 'make study')" >&2; exit 2; }
# the sweeps of the study description and their overrides in this mode, one per line (tab-separated)
mode=full
[ "$smoke" = 0 ] || mode=smoke
[ "$large" = 0 ] || mode=large
python="$(dirname "$(command -v normbench-run)")/python"
sweeps="$("$python" -m normbench.report.study "$study" "$mode")" || exit 2
if [ -z "$out" ]; then
  out="$root/reports/$(basename "$study" .yaml)"
  [ "$smoke" = 0 ] || out="${out}_smoke"
  [ "$large" = 0 ] || out="${out}_large"
fi

mkdir -p "$out"
out="$(cd "$out" && pwd)"

launcher=joblib  # one process per run, $jobs at a time
[ "$population" = 0 ] || launcher=population  # populations, $jobs groups at a time
start=$(date +%s)
status=0
summaries="$(mktemp)"
trap 'rm -f "$summaries"' EXIT
while IFS=$'\t' read -r -a sweep; do
  preset="${sweep[0]:-}"
  [ -n "$preset" ] || continue
  echo "== $preset" >&2
  (cd "$out" && normbench-run "experiment=$preset" "hydra/launcher=$launcher" "hydra.launcher.n_jobs=$jobs" \
    sweep.root=sweeps "${sweep[@]:1}" ${overrides[@]+"${overrides[@]}"}) < /dev/null | tee -a "$summaries" || status=$?
done <<< "$sweeps"
elapsed=$(( $(date +%s) - start ))
counts=$(sed -n 's/.*runs: \([0-9]*\) completed, \([0-9]*\) diverged, \([0-9]*\) failed, \([0-9]*\) skipped.*/\1 \2 \3 \4/p' "$summaries" \
  | awk '{c+=$1; d+=$2; f+=$3; s+=$4} END {print c, d, f, s}')
read -r n_completed n_diverged n_failed n_skipped <<< "$counts"
trained="$n_completed completed, $n_diverged diverged, $n_failed failed, $n_skipped skipped"
if [ $((n_completed + n_diverged + n_failed)) -gt 0 ]; then
  [ -f "$out/timings.md" ] || printf '| date (UTC) | grid | wall time | runs this invocation |\n|---|---|---:|---|\n' > "$out/timings.md"
  printf '| %s | %s | %d min %02d s | %s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$([ "$smoke" = 1 ] && echo smoke || { [ "$large" = 1 ] && echo large || echo full; })$([ "$population" = 1 ] && echo ', populations')" \
    $((elapsed / 60)) $((elapsed % 60)) "$trained" >> "$out/timings.md"
fi
echo "sweeps took $((elapsed / 60)) min $((elapsed % 60)) s ($trained)" >&2

# from inside the folder, so the report and runs.csv name the runs by relative paths
notes=()
[ -f "$out/timings.md" ] && notes=(--notes timings.md)
(cd "$out" && normbench-report sweeps --out . --study "$study" "${notes[@]}")
exit "$status"
