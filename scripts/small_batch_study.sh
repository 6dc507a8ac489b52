#!/usr/bin/env bash
# The small-batch stability study: four sweeps (resumable), then the report.
#
#   scripts/small_batch_study.sh            # full study into reports/small_batch/ (~20-30 min, 2 cores)
#   scripts/small_batch_study.sh --smoke    # reduced grid, same code, into reports/small_batch_smoke/
#   scripts/small_batch_study.sh --out DIR  # another folder
#
# Rerunning resumes: finished runs (their result.json under DIR/sweeps/) are skipped without being
# launched. Each invocation that trains something appends its wall time to DIR/timings.md, which the
# report includes; the sweeps run from inside DIR, so no file records an absolute path.
set -euo pipefail

usage() { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; }
smoke=0
out=""
jobs="${NORMBENCH_JOBS:-2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) [ $# -ge 2 ] || { echo "small_batch_study.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift ;;
    --jobs) [ $# -ge 2 ] || { echo "small_batch_study.sh: --jobs needs a number" >&2; exit 2; }; jobs="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "small_batch_study.sh: unknown argument '$1' (allowed: --smoke, --out DIR, --jobs N)" >&2; exit 2 ;;
  esac
  shift
done
case "$jobs" in ''|*[!0-9]*|0) echo "small_batch_study.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$out" ]; then
  if [ "$smoke" = 1 ]; then out="$root/reports/small_batch_smoke"; else out="$root/reports/small_batch"; fi
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
command -v normbench-run >/dev/null || { echo "small_batch_study.sh: normbench-run not found; run 'make setup' and use .venv/bin on PATH (or 'make study')" >&2; exit 2; }

# preset -> the reduced grid of smoke mode, through the same presets and code (the whole
# hydra.sweeper.params dict is replaced: lists inside are quoted so Hydra does not sweep its own config)
declare -A SMOKE=(
  [small_batch_mlp]="{norm:'batchnorm,layernorm,groupnorm,identity',batch_size:'2,32',seed:0,train.budget:'epochs,steps'}"
  [small_batch_cnn]="{task:mnist1d_cnn,norm:'batchnorm,instancenorm,groupnorm',batch_size:'2,32',seed:0,train.budget:'epochs,steps'}"
  [small_batch_noniid]="{task:mnist1d_cnn,norm:'batchnorm,groupnorm',batch_size:16,seed:0}"
  [small_batch_ghost]="{task:mnist1d_mlp,norm.ghost_batch_size:'4,128',seed:0}"
)
smoke_budget=(train.epochs=1 train.steps=40)

start=$(date +%s)
status=0
summaries="$(mktemp)"
trap 'rm -f "$summaries"' EXIT
for preset in small_batch_mlp small_batch_cnn small_batch_noniid small_batch_ghost; do
  extra=()
  if [ "$smoke" = 1 ]; then extra=("hydra.sweeper.params=${SMOKE[$preset]}" "${smoke_budget[@]}"); fi
  echo "== $preset" >&2
  (cd "$out" && normbench-run "experiment=$preset" hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs" \
    sweep.root=sweeps "${extra[@]}") | tee -a "$summaries" || status=$?
done
elapsed=$(( $(date +%s) - start ))
counts=$(sed -n 's/.*runs: \([0-9]*\) completed, \([0-9]*\) diverged, \([0-9]*\) failed, \([0-9]*\) skipped.*/\1 \2 \3 \4/p' "$summaries" \
  | awk '{c+=$1; d+=$2; f+=$3; s+=$4} END {print c, d, f, s}')
read -r n_completed n_diverged n_failed n_skipped <<< "$counts"
trained="$n_completed completed, $n_diverged diverged, $n_failed failed, $n_skipped skipped"
if [ $((n_completed + n_diverged + n_failed)) -gt 0 ]; then
  [ -f "$out/timings.md" ] || printf '| date (UTC) | grid | wall time | runs this invocation |\n|---|---|---:|---|\n' > "$out/timings.md"
  printf '| %s | %s | %d min %02d s | %s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$([ "$smoke" = 1 ] && echo smoke || echo full)" \
    $((elapsed / 60)) $((elapsed % 60)) "$trained" >> "$out/timings.md"
fi
echo "sweeps took $((elapsed / 60)) min $((elapsed % 60)) s ($trained)" >&2

# from inside the folder, so the report and runs.csv name the runs by relative paths
notes=()
[ -f "$out/timings.md" ] && notes=(--notes timings.md)
(cd "$out" && normbench-report sweeps --out . --title "Small-batch stability study" "${notes[@]}")
exit "$status"
