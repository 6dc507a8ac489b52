#!/usr/bin/env bash
# A study: the sweeps its description lists (conf/study/small_batch.yaml by default; resumable), the
# rounds that bracket its selected learning rates, then its report with the description's claims.
#
#   scripts/small_batch_study.sh            # the batch-size curve into reports/small_batch/
#   scripts/small_batch_study.sh --smoke    # reduced grid, same code, one bracketing round (MAX_ROUNDS),
#                                           # into reports/small_batch_smoke/
#   scripts/small_batch_study.sh --large    # the description's large grid, into reports/small_batch_large/
#                                           # (for a GPU: add -- runtime.device=cuda)
#   scripts/small_batch_study.sh --study conf/study/sequence_gan.yaml  # another study, into reports/sequence_gan/
#   scripts/small_batch_study.sh --task NAME  # the study's first sweep (its curve) on task NAME (a
#                                           # conf/task/ entry or an installed task plugin's preset),
#                                           # into reports/<study>_NAME/
#   scripts/small_batch_study.sh --out DIR  # another folder (new, or one a study or report wrote)
#   scripts/small_batch_study.sh --separate # one process per run (default: runs that differ only in
#                                           # seed/lr/... train together as populations)
#   scripts/small_batch_study.sh -- KEY=VALUE ...  # Hydra overrides added to every sweep
#
# Rerunning resumes: DIR/records.jsonl (the committed evidence, one line per run) is unpacked into the run
# folders under DIR/sweeps/ (not version-controlled) and finished runs are skipped without being launched;
# at the end (or on Ctrl-C) every record under DIR/sweeps/ is packed back into DIR/records.jsonl, from
# which the report is built. Where the description has a `bracket` rule, cells whose best learning rate
# sits at an edge of their grid are rerun one grid step further (python -m normbench.report.rounds)
# until none is. Each invocation that trains something appends its wall time to DIR/timings.md, which
# the report includes; the sweeps run from inside DIR, so no file records an absolute path.
set -euo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
smoke=0
population=1
large=0
task=""
study=""
out=""
overrides=()
jobs="${NORMBENCH_JOBS:-2}"
once() {  # once OPTION VALUE_SO_FAR: an option given twice would silently keep its last value
  [ -z "$2" ] || { echo "small_batch_study.sh: $1 given twice ('$2' first); give it once" >&2; exit 2; }
}
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --large) large=1 ;;
    --population) population=1 ;;
    --separate) population=0 ;;
    --task) once --task "$task"; [ $# -ge 2 ] || { echo "small_batch_study.sh: --task needs a name (conf/task/*.yaml)" >&2; exit 2; }; task="$2"; shift ;;
    --study) once --study "$study"; [ $# -ge 2 ] || { echo "small_batch_study.sh: --study needs a file" >&2; exit 2; }; study="$2"; shift ;;
    --) shift; overrides=("$@"); break ;;
    --out) once --out "$out"; [ $# -ge 2 ] || { echo "small_batch_study.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift ;;
    --jobs) [ $# -ge 2 ] || { echo "small_batch_study.sh: --jobs needs a number" >&2; exit 2; }; jobs="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "small_batch_study.sh: unknown argument '$1' (allowed: --smoke, --large, --separate, --task NAME, --study FILE, --out DIR, --jobs N, -- OVERRIDES)" >&2; exit 2 ;;
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
# any task preset normbench-run knows: conf/task/ and the presets of installed task plugins
if [ -n "$task" ] && ! problem="$(normbench-run "task=$task" --cfg job 2>&1 >/dev/null)"; then
  echo "small_batch_study.sh: --task $task: ${problem##*error: }" >&2
  exit 2
fi
# the sweeps of the study description and their overrides in this mode, one per line (tab-separated)
mode=full
[ "$smoke" = 0 ] || mode=smoke
[ "$large" = 0 ] || mode=large
python="$(dirname "$(command -v normbench-run)")/python"
sweeps="$("$python" -m normbench.report.study "$study" "$mode")" || exit 2
if [ -n "$task" ]; then  # the first sweep (the curve) on another task
  sweeps="$(head -n 1 <<< "$sweeps")"
  overrides=("task=$task" ${overrides[@]+"${overrides[@]}"})
fi
if [ -z "$out" ]; then
  out="$root/reports/$(basename "$study" .yaml)"
  [ -z "$task" ] || out="${out}_$task"
  [ "$smoke" = 0 ] || out="${out}_smoke"
  [ "$large" = 0 ] || out="${out}_large"
fi

mkdir -p "$out" 2> /dev/null || { echo "small_batch_study.sh: --out $out: cannot make that folder (a file, or no permission)" >&2; exit 2; }
out="$(cd "$out" && pwd)"
# the report goes into $out at the end: a folder holding figures/ or a report.md of a user's own is refused now
problem="$("$python" -c 'import sys; from pathlib import Path; from normbench.report.build import check_output_folder
try: check_output_folder(Path(sys.argv[1]))
except ValueError as e: sys.exit(str(e))' "$out" 2>&1)" || { echo "small_batch_study.sh: --out $problem" >&2; exit 2; }

launcher=joblib  # one process per run, $jobs at a time
[ "$population" = 0 ] || launcher=population  # populations, $jobs groups at a time
start=$(date +%s)
status=0
summaries="$(mktemp)"
trap 'rm -f "$summaries"' EXIT
record_timings() {  # one line in $out/timings.md for an invocation that trained something ($1: how it ended)
  elapsed=$(( $(date +%s) - start ))
  # what trained, from the records finished since the start (a sweep stopped by a signal prints no
  # summary); the skipped runs, from the sweeps' summaries
  read -r n_completed n_diverged n_failed <<< "$("$python" -m normbench.evidence count "$out" --since "$start")"
  n_skipped=$(sed -n 's/.*runs: [0-9]* completed, [0-9]* diverged, [0-9]* failed, \([0-9]*\) skipped.*/\1/p' "$summaries" \
    | awk '{s+=$1} END {print s+0}')
  trained="$n_completed completed, $n_diverged diverged, $n_failed failed, $n_skipped skipped"
  if [ $((n_completed + n_diverged + n_failed)) -gt 0 ]; then
    [ -f "$out/timings.md" ] || printf '| date (UTC) | grid | wall time | runs this invocation |\n|---|---|---:|---|\n' > "$out/timings.md"
    printf '| %s | %s%s | %d min %02d s | %s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$([ "$smoke" = 1 ] && echo smoke || { [ "$large" = 1 ] && echo large || echo full; })$([ "$population" = 1 ] && echo ', populations')" \
      "$1" $((elapsed / 60)) $((elapsed % 60)) "$trained" >> "$out/timings.md"
  fi
}
# Ctrl-C or SIGTERM: the runs that finished are kept (the next invocation resumes); the time is recorded
trap 'record_timings ", stopped by a signal (runs in training then were lost; a rerun trains them)"; "$python" -m normbench.evidence pack "$out"; rm -f "$summaries"; exit 143' INT TERM
"$python" -m normbench.evidence unpack "$out" || exit 2
run_sweeps() {  # one sweep per line of $1: the preset, then its overrides (tab-separated); $2: its jobs
  while IFS=$'\t' read -r -a sweep; do
    preset="${sweep[0]:-}"
    [ -n "$preset" ] || continue
    echo "== $preset ${sweep[*]:1}" >&2
    (cd "$out" && normbench-run "experiment=$preset" "hydra/launcher=$launcher" "hydra.launcher.n_jobs=${2:-$jobs}" \
      sweep.root=sweeps "${sweep[@]:1}" ${overrides[@]+"${overrides[@]}"}) < /dev/null \
      | (trap '' INT TERM; exec tee -a "$summaries") || status=$?  # tee outlives a Ctrl-C: the sweep's summary gets out
  done <<< "$1"
}
run_sweeps "$sweeps"
run_round() {  # a bracketing round's sweeps (one small population each), $jobs at a time, slowest first
  # as populations, the slowest cell's launcher spreads it over $jobs workers (no core idles if it
  # ends last) and each later one trains in its sweep's own process: no workers to start for a few
  # members, and no more trainers than cores
  local running=0 line per_sweep=$jobs
  while IFS= read -r line; do
    run_sweeps "$line" "$per_sweep" &
    [ "$population" = 0 ] || per_sweep=1
    running=$((running + 1))
    if [ "$running" -ge "$jobs" ]; then wait -n; running=$((running - 1)); fi
  done <<< "$1"
  wait
}
# bracketing: each round extends the cells whose choice sits at an edge; a round proposes only values
# not tried yet, so it ends (MAX_ROUNDS guards against a description whose bounds are far apart)
last=""
rounds="${MAX_ROUNDS:-12}"
[ "$smoke" = 0 ] || rounds="${MAX_ROUNDS:-1}"  # the smoke grid: one round runs the rule's code
for round in $(seq 1 "$rounds"); do
  more="$("$python" -m normbench.report.rounds "$study" "$out/sweeps" "$mode")" || exit 2
  [ -n "$more" ] || break
  if [ "$more" = "$last" ]; then
    echo "small_batch_study.sh: bracketing round $round asks for the runs of the last round again (they did not finish; see above); stopping" >&2
    status=1
    break
  fi
  last="$more"
  echo "== bracketing round $round: $(wc -l <<< "$more") cell(s) at an edge of their grid" >&2
  run_round "$more"
done
record_timings ""
"$python" -m normbench.evidence pack "$out" || exit 2
echo "sweeps took $((elapsed / 60)) min $((elapsed % 60)) s ($trained)" >&2

# from inside the folder, so the report and runs.csv name the runs by relative paths
notes=()
[ -f "$out/timings.md" ] && notes=(--notes timings.md)
(cd "$out" && normbench-report records.jsonl --out . --study "$study" "${notes[@]}")
# the default study's table is copied into the README and the docs' home page
if [ "$(cd "$out" && pwd)" = "$(cd "$(dirname "$0")/.." && pwd)/reports/small_batch" ]; then
  "$python" -m normbench.docs >/dev/null || exit 2
fi
exit "$status"
