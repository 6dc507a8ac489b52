#!/usr/bin/env bash
# Every CUDA check and benchmark of normbench in one run of at most 6 minutes on an H100/H200 (GPU time
# comes in short slots). Run from the project root on a CUDA machine whose image has torch; the wheels it
# lacks (hydra-core, omegaconf, antlr4 4.9.3, mnist1d: ../shared/gpu/prepare_wheels.sh builds them into
# .whl/) are installed from .whl/ when that folder exists.
#
#   bash scripts/gpu_checks.sh [OUT_DIR [STEP...]]   # default reports/bench; files written as each step ends
#
# STEPs (default: all, in this order): population check_cuda e2e bench_norms profile_norm bench_train
# convert. The whole call keeps within GPU_CHECKS_BUDGET seconds (default 345, wheels' install
# included): each command's time limit is cut to what is left, and the steps that no longer fit are
# skipped and named at the end of the log with the call that runs them.
#
# Writes population_cuda.md (K=512 populations, wide and captured, vs separate runs and a wide MLP written
# by hand, scripts/minimal_wide.py),
# profile_population_cuda.md (the captured step against its kernels' busy time, operator by operator, and
# the bytes each operator moves: how near the step runs to the card's bandwidth),
# single_run_cuda.md (one run's captured step), profile_single_cuda.md (its profile), step_norms_cuda.md
# (every plugin inside one run's training step, eager and captured), capture_check_cuda.md (a population's captured CUDA-graph step vs
# its eager step), cuda_check.md (fp32 + bf16 correctness), diagnose_cuda.md (normbench.diagnose on
# CUDA vs the CPU), e2e_cuda.md (normbench-run on the GPU with bf16/fp16, channels_last and
# torch.compile), norms_cuda.md (plugins vs BatchNorm2d), profile_cuda.txt (host time per piece of the
# Triton path), train_cuda.md (normbench's loop vs a minimal loop), train_cifar10_resnet20_cuda_{fp32,bf16}.md
# (images/s at batch 128), convert_torchvision_cuda.md (real torchvision models) and gpu_log.txt.
set -uo pipefail
out="${1:-reports/bench}"
steps=(population check_cuda e2e bench_norms profile_norm bench_train convert)
chosen=" ${*:2} "
for name in ${*:2}; do
  if [[ " ${steps[*]} " != *" $name "* ]]; then
    echo "gpu_checks.sh: unknown step '$name' (steps: ${steps[*]})" >&2
    exit 2
  fi
done
budget="${GPU_CHECKS_BUDGET:-345}"
if ! [[ "$budget" =~ ^[1-9][0-9]*$ ]]; then
  echo "gpu_checks.sh: GPU_CHECKS_BUDGET=$budget is not a whole number of seconds > 0" >&2
  exit 2
fi
selected() { [ "$chosen" = "  " ] || [[ "$chosen" == *" $1 "* ]]; }
mkdir -p "$out"
log="$out/gpu_log.txt"
skipped=()
source scripts/gpu_env.sh
step() {  # step GROUP SECONDS NAME COMMAND...: a step that fails or runs out of time is logged, the rest go on
  local group="$1" limit="$2" name="$3" left=$((budget - SECONDS))
  selected "$group" || return 0
  shift 3
  if ((left < 10)); then  # too little left for a command to start: named at the end instead
    echo "== $name: skipped, the ${budget} s budget is spent" >> "$log"
    [[ " ${skipped[*]} " == *" $group "* ]] || skipped+=("$group")
    return 0
  fi
  echo "== $name ($(date -u +%H:%M:%S))" >> "$log"
  timeout "$((limit < left ? limit : left))" "$@" >> "$log" 2>&1
  echo "== $name: exit $?" >> "$log"
}
timeout 15 nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
timeout 30 python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$log" 2>&1

# What #29's targets need first: K=512 populations (captured wide step) against separate eager runs, where
# their step's time goes, one run alone with its step captured, every plugin inside a captured step
step population 100 bench_population python3 scripts/bench_population.py --device cuda --members 512 \
  --steps 500 --rounds 1 --separate-members 2 --forms wide:graph minimal:graph --out "$out/population_cuda.md"
step population 90 profile_population python3 scripts/profile_population.py --device cuda --members 512 \
  --steps 100 --out "$out/profile_population_cuda.md"
step population 40 bench_single python3 scripts/bench_population.py --device cuda --members 1 --steps 1000 \
  --rounds 1 --forms auto:graph --out "$out/single_run_cuda.md"
# the same for one run alone (its kernels per step are what its captured step replays)
step population 30 profile_single python3 scripts/profile_population.py --device cuda --members 1 --form auto \
  --batch-sizes 2 --steps 200 --out "$out/profile_single_cuda.md"
step population 60 step_norms python3 scripts/bench_norms.py --device cuda --in-step --rounds 1 \
  --out "$out/step_norms_cuda.md"
step population 60 check_capture python3 scripts/check_capture.py --members 1 3 --steps 60 --out "$out/capture_check_cuda.md"
step check_cuda 90 check_cuda python3 scripts/check_cuda.py --out "$out/cuda_check.md"
step check_cuda 20 check_diagnose python3 scripts/check_diagnose_cuda.py --out "$out/diagnose_cuda.md"

e2e="$out/e2e_cuda.md"
selected e2e && printf '# normbench-run on CUDA\n\n| overrides | status | test_error | steps | s/step | env |\n|---|---|---:|---:|---:|---|\n' > "$e2e"
run_e2e() {  # run_e2e SECONDS OVERRIDE...
  local dir limit="$1"
  shift
  selected e2e || return 0
  dir="$(mktemp -d)"
  step e2e "$limit" "normbench $*" python3 -m normbench runtime.device=cuda train.budget=steps train.steps=300 \
    runtime.progress=false "hydra.run.dir=$dir" "$@"
  [ -f "$dir/result.json" ] || return 0  # skipped, or stopped before its record
  python3 - "$dir/result.json" "$*" >> "$e2e" 2>> "$log" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
env = {k: r["env"].get(k) for k in ("gpu", "precision", "channels_last", "compile", "population", "cuda_graph")}
print(f"| {sys.argv[2]} | {r['status']} | {r['metrics'].get('test_error')} | {r['steps']} "
      f"| {r.get('time_per_step_s', 0):.5f} | {env} |")
EOF
}
run_e2e 30 task=mnist1d_mlp norm=batchnorm
run_e2e 30 task=digits_cnn norm=groupnorm runtime.precision=bf16 runtime.channels_last=true
run_e2e 30 task=mnist1d_cnn norm=evonorm_b0 runtime.precision=fp16
run_e2e 60 task=mnist1d_cnn norm=frn runtime.compile=true
run_e2e 30 task=mnist1d_mlp norm=batchrenorm runtime.precision=bf16

step bench_norms 120 bench_norms python3 scripts/bench_norms.py --device cuda --rounds 5 --inner 10 --out "$out/norms_cuda.md"
# host time of each piece of the Triton path and of the plugins slowest at small shapes
step profile_norm 30 profile_norm bash -c 'python3 scripts/profile_norm.py rmsnorm batchrenorm ghost_batchnorm switchnorm evonorm_b0 > "$0"' \
  "$out/profile_cuda.txt"
step bench_train 40 bench_train python3 scripts/bench_train.py --device cuda --steps 300 --rounds 3 --out "$out/train_cuda.md"
for precision in fp32 bf16; do  # images/s of the CIFAR ResNet-20 at batch 128 (synthetic data without CIFAR)
  step bench_train 40 "bench_train cifar $precision" python3 scripts/bench_train.py --task cifar10_resnet20 --device cuda \
    --precision "$precision" --batch-sizes 128 --steps 50 --rounds 3 --out "$out/train_cifar10_resnet20_cuda_$precision.md"
done
step convert 45 convert_torchvision python3 scripts/check_convert_torchvision.py --device cuda --out "$out/convert_torchvision_cuda.md"
if ((${#skipped[@]})); then
  echo "not run within the ${budget} s budget: ${skipped[*]}; run them with: bash scripts/gpu_checks.sh $out ${skipped[*]}" \
    | tee -a "$log"
fi
echo "done in ${SECONDS} s $(date -u +%H:%M:%S)" >> "$log"
