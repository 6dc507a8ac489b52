#!/usr/bin/env bash
# The small-batch stability study: six sweeps (resumable), then its report with the claims of
# conf/study/small_batch.yaml.
#
#   scripts/small_batch_study.sh            # full study into reports/small_batch/ (about an hour, 2 cores)
#   scripts/small_batch_study.sh --smoke    # reduced grid, same code, into reports/small_batch_smoke/
#   scripts/small_batch_study.sh --large    # 10 seeds, batch sizes 2-128 for every norm, into
#                                           # reports/small_batch_large/ (for a GPU: add -- runtime.device=cuda)
#   scripts/small_batch_study.sh --out DIR  # another folder
#   scripts/small_batch_study.sh -- KEY=VALUE ...  # Hydra overrides added to every sweep
#
# Rerunning resumes: finished runs (their result.json under DIR/sweeps/) are skipped without being
# launched. Each invocation that trains something appends its wall time to DIR/timings.md, which the
# report includes; the sweeps run from inside DIR, so no file records an absolute path.
set -euo pipefail

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
smoke=0
large=0
out=""
overrides=()
jobs="${NORMBENCH_JOBS:-2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --large) large=1 ;;
    --) shift; overrides=("$@"); break ;;
    --out) [ $# -ge 2 ] || { echo "small_batch_study.sh: --out needs a folder" >&2; exit 2; }; out="$2"; shift ;;
    --jobs) [ $# -ge 2 ] || { echo "small_batch_study.sh: --jobs needs a number" >&2; exit 2; }; jobs="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "small_batch_study.sh: unknown argument '$1' (allowed: --smoke, --large, --out DIR, --jobs N, -- OVERRIDES)" >&2; exit 2 ;;
  esac
  shift
done
[ "$smoke$large" != 11 ] || { echo "small_batch_study.sh: --smoke and --large exclude each other" >&2; exit 2; }
case "$jobs" in ''|*[!0-9]*|0) echo "small_batch_study.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -z "$out" ]; then
  out="$root/reports/small_batch"
  [ "$smoke" = 0 ] || out="${out}_smoke"
  [ "$large" = 0 ] || out="${out}_large"
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
command -v normbench-run >/dev/null || { echo "small_batch_study.sh: normbench-run not found; run 'make setup' and use .venv/bin on PATH (or 'make study')" >&2; exit 2; }

# the presets of the study description (conf/study/small_batch.yaml), in order
presets=(small_batch_mlp small_batch_cnn small_batch_b2 small_batch_noniid small_batch_ghost small_batch_init)
# preset -> the reduced grid of smoke mode, through the same presets and code (the whole
# hydra.sweeper.params dict is replaced: lists inside are quoted so Hydra does not sweep its own config)
declare -A SMOKE=(
  [small_batch_mlp]="{norm:'batchnorm,groupnorm,identity',optim.lr:'0.05,0.8',seed:'0,1'}"
  [small_batch_cnn]="{norm:'batchnorm,groupnorm',optim.lr:'0.05,0.8',seed:'0,1'}"
  [small_batch_b2]="{task:mnist1d_mlp,norm:'batchnorm,groupnorm',optim.lr:0.05,seed:'0,1'}"
  [small_batch_noniid]="{task:mnist1d_mlp,norm:'batchnorm,groupnorm',optim.lr:0.05,seed:'0,1'}"
  [small_batch_ghost]="{task:mnist1d_mlp,norm.ghost_batch_size:'2,32',optim.lr:0.05,seed:'0,1'}"
  [small_batch_init]="{task:mnist1d_mlp,norm:'batchnorm,identity',task.model.init_scale:4.0,seed:'0,1'}"
)
smoke_budget=(train.epochs=1)
seeds10="seed:'0,1,2,3,4,5,6,7,8,9'"
lrs="optim.lr:'0.0125,0.05,0.2,0.8'"
batches="batch_size:'2,4,8,16,32,64,128'"
declare -A LARGE=(
  [small_batch_mlp]="{norm:'batchnorm,groupnorm,layernorm,identity',$batches,$lrs,$seeds10}"
  [small_batch_cnn]="{norm:'batchnorm,groupnorm,layernorm,instancenorm,identity',$batches,$lrs,$seeds10}"
  [small_batch_b2]="{task:'mnist1d_mlp,mnist1d_cnn',norm:'batchnorm,groupnorm',optim.lr:'0.0125,0.05',$seeds10}"
  [small_batch_noniid]="{task:'mnist1d_mlp,mnist1d_cnn',norm:'batchnorm,groupnorm,layernorm,identity',optim.lr:'0.0125,0.05',$seeds10}"
  [small_batch_ghost]="{task:'mnist1d_mlp,mnist1d_cnn',norm.ghost_batch_size:'2,4,8,16,32',optim.lr:'0.0125,0.05',$seeds10}"
  [small_batch_init]="{task:'mnist1d_mlp,mnist1d_cnn',norm:'batchnorm,groupnorm,layernorm,identity',task.model.init_scale:'0.25,4.0',$seeds10}"
)

start=$(date +%s)
status=0
summaries="$(mktemp)"
trap 'rm -f "$summaries"' EXIT
for preset in "${presets[@]}"; do
  extra=()
  if [ "$smoke" = 1 ]; then extra=("hydra.sweeper.params=${SMOKE[$preset]}" "${smoke_budget[@]}"); fi
  if [ "$large" = 1 ]; then extra=("hydra.sweeper.params=${LARGE[$preset]}"); fi
  echo "== $preset" >&2
  (cd "$out" && normbench-run "experiment=$preset" hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs" \
    sweep.root=sweeps "${extra[@]}" ${overrides[@]+"${overrides[@]}"}) | tee -a "$summaries" || status=$?
done
elapsed=$(( $(date +%s) - start ))
counts=$(sed -n 's/.*runs: \([0-9]*\) completed, \([0-9]*\) diverged, \([0-9]*\) failed, \([0-9]*\) skipped.*/\1 \2 \3 \4/p' "$summaries" \
  | awk '{c+=$1; d+=$2; f+=$3; s+=$4} END {print c, d, f, s}')
read -r n_completed n_diverged n_failed n_skipped <<< "$counts"
trained="$n_completed completed, $n_diverged diverged, $n_failed failed, $n_skipped skipped"
if [ $((n_completed + n_diverged + n_failed)) -gt 0 ]; then
  [ -f "$out/timings.md" ] || printf '| date (UTC) | grid | wall time | runs this invocation |\n|---|---|---:|---|\n' > "$out/timings.md"
  printf '| %s | %s | %d min %02d s | %s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$([ "$smoke" = 1 ] && echo smoke || { [ "$large" = 1 ] && echo large || echo full; })" \
    $((elapsed / 60)) $((elapsed % 60)) "$trained" >> "$out/timings.md"
fi
echo "sweeps took $((elapsed / 60)) min $((elapsed % 60)) s ($trained)" >&2

# from inside the folder, so the report and runs.csv name the runs by relative paths
notes=()
[ -f "$out/timings.md" ] && notes=(--notes timings.md)
(cd "$out" && normbench-report sweeps --out . --study "$root/conf/study/small_batch.yaml" "${notes[@]}")
exit "$status"
