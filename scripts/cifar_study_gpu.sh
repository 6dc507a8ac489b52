#!/usr/bin/env bash
# The CIFAR-10 section of the study on one GPU (issue: real workloads; target <= 15 minutes): the sweep
# of conf/experiment/cifar_study.yaml, then its report with the claims of conf/study/cifar.yaml.
#
#   bash scripts/cifar_study_gpu.sh [OUT_DIR] [N_JOBS]   # default reports/cifar, 8 jobs sharing the GPU
#
# CIFAR-10 is read from data.root ($NORMBENCH_DATA or ~/.cache/normbench; `-- data.download=true` is not
# offered here: pass the data). Without it, NORMBENCH_SYNTHETIC=1 writes a synthetic dataset of CIFAR-10's
# size in its binary format first, which times the study but whose errors mean nothing. The wall time
# goes to OUT_DIR/timings.md with the GPU's name. Run from the project root where normbench imports
# (pip install -e ., or the PYTHONPATH scripts/gpu_checks.sh sets up).
set -euo pipefail
out="${1:-reports/cifar}"
jobs="${2:-8}"
root="$(cd "$(dirname "$0")/.." && pwd)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
data=()
if [ "${NORMBENCH_SYNTHETIC:-0}" = 1 ]; then
  synthetic="$(mktemp -d)"
  python3 -c "import sys; from pathlib import Path; from normbench.tasks.cifar import write_fixture; write_fixture(Path(sys.argv[1]), 'cifar10', 50000, 10000)" "$synthetic"
  data=("data.root=$synthetic")
fi
gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
python3 -m normbench.evidence unpack "$out"  # resume from committed records
start=$(date +%s)
(cd "$out" && python3 -m normbench experiment=cifar_study runtime.device=cuda hydra/launcher=joblib \
  "hydra.launcher.n_jobs=$jobs" sweep.root=sweeps ${data[@]+"${data[@]}"}) || true
elapsed=$(( $(date +%s) - start ))
[ -f "$out/timings.md" ] || printf '| date (UTC) | GPU | data | wall time |\n|---|---|---|---:|\n' > "$out/timings.md"
printf '| %s | %s | %s | %d min %02d s |\n' "$(date -u +%Y-%m-%dT%H:%MZ)" "$gpu" \
  "$([ ${#data[@]} -gt 0 ] && echo synthetic || echo CIFAR-10)" $((elapsed / 60)) $((elapsed % 60)) >> "$out/timings.md"
python3 -m normbench.evidence pack "$out"
(cd "$out" && python3 -c "from normbench.cli import report; report()" records.jsonl --out . \
  --study "$root/conf/study/cifar.yaml" --notes timings.md)
