#!/usr/bin/env bash
# The curve study's --large grid (conf/study/small_batch.yaml: 10 seeds in every cell, the MLP, the conv
# net, its two mechanism ablations and the deeper ResNet, learning rates bracketed) trained as
# populations on one GPU (H100/H200), then its report. Run from the project root on a CUDA machine
# whose image has torch; the wheels it lacks (../shared/gpu/prepare_wheels.sh builds them into .whl/)
# are installed from .whl/ when that folder exists. One call of at most 8 minutes; it resumes, so a
# call cut short is continued by the next.
#
#   bash scripts/study_gpu.sh [OUT_DIR]   # default reports/small_batch_large
#
# Exit status: 0 when the grid and its report are done, 3 when stopped at the time limit (the next call
# resumes), else the study's own. STUDY_GPU_LIMIT (seconds, default 420) bounds the training;
# STUDY_GPU_DEVICE (default cuda) and STUDY_GPU_OVERRIDES (Hydra overrides, space-separated) let the
# tests run the same script on a CPU.
set -uo pipefail
out="${1:-reports/small_batch_large}"
mkdir -p "$out"
source scripts/gpu_env.sh
# the console scripts small_batch_study.sh calls, for a tree that is not pip-installed
bin="$(mktemp -d)"
printf '#!/bin/sh\nexec python3 "$@"\n' > "$bin/python"
printf '#!/bin/sh\nexec python3 -m normbench "$@"\n' > "$bin/normbench-run"
printf '#!/bin/sh\nexec python3 -c "from normbench.cli import report; report()" "$@"\n' > "$bin/normbench-report"
chmod +x "$bin/python" "$bin/normbench-run" "$bin/normbench-report"
gpu="$(python3 -c 'import torch; print(torch.cuda.get_device_name())' 2>/dev/null || echo 'no GPU')"
echo "study_gpu.sh on $gpu, $(date -u +%Y-%m-%dT%H:%MZ)" | tee "$out/gpu_log.txt"
study="$PWD/conf/study/small_batch.yaml"
# several populations at once on the GPU, each up to 512 members, every run on the GPU; the whole
# process group is stopped at the time limit (finished runs are kept; the next call resumes)
PATH="$bin:$PATH" NORMBENCH_JOBS="${NORMBENCH_JOBS:-4}" setsid bash scripts/small_batch_study.sh --large --out "$out" \
  -- "runtime.device=${STUDY_GPU_DEVICE:-cuda}" runtime.progress=false hydra.launcher.max_members=512 \
  ${STUDY_GPU_OVERRIDES:-} >> "$out/gpu_log.txt" 2>&1 &
pid=$!
limit="${STUDY_GPU_LIMIT:-420}"
for _ in $(seq "$limit"); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
stopped=0
if kill -0 "$pid" 2>/dev/null; then
  kill -TERM -- "-$pid" 2>/dev/null
  # up to 5 s for the group to save and exit (what is left then is killed)
  for _ in $(seq 50); do kill -0 -- "-$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null
  echo "study_gpu.sh: stopped at the ${limit} s limit; rerun to resume" | tee -a "$out/gpu_log.txt"
  stopped=1
fi
wait "$pid" 2>/dev/null
status=$?
((stopped)) && status=3  # not the killed study's signal status: resumable, not failed
# the report of whatever has finished (small_batch_study.sh writes it too when it ends by itself)
python3 -m normbench.evidence pack "$out" >> "$out/gpu_log.txt" 2>&1
(cd "$out" && PATH="$bin:$PATH" timeout 60 normbench-report records.jsonl --out . --study "$study") >> "$out/gpu_log.txt" 2>&1
tail -n 5 "$out/gpu_log.txt"
exit "$status"
