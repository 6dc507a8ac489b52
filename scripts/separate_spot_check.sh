#!/usr/bin/env bash
# The curve study's spot check of population training (#30 item 9): cells of reports/small_batch/ trained
# again one run per process (Hydra's joblib launcher, normbench's single-run loop) into
# reports/small_batch_separate/, then compared with their population-trained twins, config by config and
# claim by claim (scripts/compare_runs.py -> reports/small_batch_separate/agreement.md).
#
#   scripts/separate_spot_check.sh            # train what is missing (resumes), then compare
#   scripts/separate_spot_check.sh --jobs 1   # one run at a time
#
# The cells are those of the primary claims, each at the learning rate(s) the population training chose
# for it when the cell was added here (the MLP: 2026-12-04; the conv net: 2026-12-05, after its
# bracketing), with the seeds listed (the conv net's batch-2 cells, a minute per run, 5 of their 10).
# A rerun skips every run whose record is there.
set -euo pipefail

jobs="${NORMBENCH_JOBS:-2}"
while [ $# -gt 0 ]; do
  case "$1" in
    --jobs) [ $# -ge 2 ] || { echo "separate_spot_check.sh: --jobs needs a number" >&2; exit 2; }; jobs="$2"; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "separate_spot_check.sh: unknown argument '$1' (allowed: --jobs N)" >&2; exit 2 ;;
  esac
  shift
done
case "$jobs" in ''|*[!0-9]*|0) echo "separate_spot_check.sh: --jobs must be a positive integer, got '$jobs'" >&2; exit 2 ;; esac
command -v normbench-run >/dev/null || { echo "separate_spot_check.sh: normbench-run not found; run 'make setup' and use .venv/bin on PATH" >&2; exit 2; }
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/reports/small_batch_separate"
python="$(dirname "$(command -v normbench-run)")/python"

# one sweep per line: the preset and its overrides
cells="$(cat <<'EOF'
curve_mlp norm=batchnorm,batchrenorm batch_size=4 optim.lr=0.00625 seed=range(10)
curve_mlp norm=batchnorm,groupnorm batch_size=32 optim.lr=0.0125,0.025,0.05 seed=range(10)
curve_mlp norm=batchrenorm batch_size=32,128 optim.lr=0.025 seed=range(10)
curve_mlp norm=batchnorm batch_size=128 optim.lr=0.025 seed=range(10)
curve_mlp norm=groupnorm batch_size=4 optim.lr=0.025 seed=range(10)
curve_mlp norm=groupnorm batch_size=128 optim.lr=0.0125 seed=range(10)
curve_mlp norm=identity batch_size=4,32,128 optim.lr=0.1 seed=range(10)
curve_cnn norm=batchnorm,groupnorm,identity batch_size=32 optim.lr=0.2 seed=range(10)
curve_cnn norm=batchnorm batch_size=128 optim.lr=0.1 seed=range(10)
curve_cnn norm=groupnorm batch_size=128 optim.lr=0.05 seed=range(10)
curve_cnn norm=batchnorm batch_size=2 optim.lr=0.2 seed=range(5)
curve_cnn norm=batchrenorm batch_size=2 optim.lr=0.4 seed=range(5)
curve_cnn norm=groupnorm batch_size=2 optim.lr=0.8 seed=range(5)
EOF
)"

mkdir -p "$out"
"$python" -m normbench.evidence unpack "$out"
trap '"$python" -m normbench.evidence pack "$out"; exit 143' INT TERM
while read -r -a sweep; do
  echo "== ${sweep[*]}" >&2
  (cd "$out" && normbench-run "experiment=${sweep[0]}" hydra/launcher=joblib "hydra.launcher.n_jobs=$jobs" \
    sweep.root=sweeps "${sweep[@]:1}") < /dev/null
done <<< "$cells"
"$python" -m normbench.evidence pack "$out"
cd "$root"
"$python" scripts/compare_runs.py reports/small_batch/records.jsonl reports/small_batch_separate/records.jsonl \
  --study conf/study/small_batch.yaml --out reports/small_batch_separate/agreement.md > /dev/null
echo "wrote reports/small_batch_separate/agreement.md" >&2
