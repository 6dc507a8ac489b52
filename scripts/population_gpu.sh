#!/usr/bin/env bash
# Population training on one GPU (H100/H200): the benchmark against one-by-one runs at K = 128 and 512,
# then the small-batch study's full grid trained as populations, timed. Run from the project root on a
# CUDA machine (the wheels its image lacks are installed from .whl/ as scripts/gpu_checks.sh does).
#
#   bash scripts/population_gpu.sh [OUT_DIR]   # default reports/bench
#
# Writes population_cuda.md (model-steps/s, ratio to separate runs) and study_population_cuda.md (the
# study's wall time as populations, with its summary lines); the study's runs go to a temporary folder.
set -uo pipefail
out="${1:-reports/bench}"
mkdir -p "$out"
source scripts/gpu_env.sh
timeout 240 python3 scripts/bench_population.py --device cuda --members 128 512 --steps 200 --rounds 1 \
  --separate-members 4 --out "$out/population_cuda.md"

study="$out/study_population_cuda.md"
runs="$(mktemp -d)"
gpu="$(python3 -c 'import torch; print(torch.cuda.get_device_name())')"
start=$(date +%s)
{
  echo "# The small-batch study as populations on one GPU ($gpu)"
  echo
  echo "Every sweep of conf/study/small_batch_v1.yaml with hydra/launcher=population, runtime.device=cuda,"
  echo "hydra.launcher.max_members=512, into a temporary folder (command: bash scripts/population_gpu.sh)."
  echo
  echo '```'
} > "$study"
while IFS=$'\t' read -r -a sweep; do
  [ -n "${sweep[0]:-}" ] || continue
  (cd "$runs" && timeout 600 python3 -m normbench "experiment=${sweep[0]}" hydra/launcher=population \
    hydra.launcher.max_members=512 runtime.device=cuda runtime.progress=false sweep.root=sweeps "${sweep[@]:1}") \
    2>> "$out/population_gpu_log.txt" | grep "normbench sweep" >> "$study"
done < <(python3 -m normbench.report.study conf/study/small_batch_v1.yaml full)
elapsed=$(( $(date +%s) - start ))
printf '```\n\nWall time: %d min %02d s.\n' $((elapsed / 60)) $((elapsed % 60)) >> "$study"
cat "$study"
