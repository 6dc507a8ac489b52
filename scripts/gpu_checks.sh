#!/usr/bin/env bash
# Every CUDA check and benchmark of normbench in one run of a few minutes on an H100/H200 (GPU time comes
# in short slots). Run from the project root on a CUDA machine whose image has torch; the wheels it
# lacks (hydra-core, omegaconf, antlr4 4.9.3, mnist1d: ../shared/gpu/prepare_wheels.sh builds them into
# .whl/) are installed from .whl/ when that folder exists.
#
#   bash scripts/gpu_checks.sh [OUT_DIR [STEP...]]   # default reports/bench; files written as each step ends
#
# STEPs (default: all, in this order): population bench_norms check_cuda profile_norm bench_train e2e
# convert. A call that was cut short can be followed by one that names the steps still missing.
#
# Writes capture_check_cuda.md (a population's captured CUDA-graph step vs its eager step),
# population_cuda.md (populations, wide and vmap, eager and captured, vs separate runs, K = 32-512),
# step_norms_cuda.md (every plugin inside one run's training step, eager and captured), cuda_check.md (fp32 + bf16 correctness), diagnose_cuda.md (normbench.diagnose on CUDA vs the CPU), norms_cuda.md (plugins vs BatchNorm2d), train_cuda.md
# (normbench's loop vs a minimal loop), train_cifar10_resnet20_cuda_{fp32,bf16}.md (images/s at batch 128), convert_torchvision_cuda.md (real torchvision models), e2e_cuda.md
# (normbench-run on the GPU with bf16/fp16, channels_last and torch.compile), profile_cuda.txt (host time
# per piece of the Triton path) and gpu_log.txt.
set -uo pipefail
out="${1:-reports/bench}"
steps=(population bench_norms check_cuda profile_norm bench_train e2e convert)
chosen=" ${*:2} "
for name in ${*:2}; do
  if [[ " ${steps[*]} " != *" $name "* ]]; then
    echo "gpu_checks.sh: unknown step '$name' (steps: ${steps[*]})" >&2
    exit 2
  fi
done
selected() { [ "$chosen" = "  " ] || [[ "$chosen" == *" $1 "* ]]; }
mkdir -p "$out"
log="$out/gpu_log.txt"
source scripts/gpu_env.sh
step() {  # step GROUP SECONDS NAME COMMAND...: a step that fails or runs out of time is logged, the rest go on
  local limit="$2" name="$3"
  selected "$1" || return 0
  shift 3
  echo "== $name ($(date -u +%H:%M:%S))" >> "$log"
  timeout "$limit" "$@" >> "$log" 2>&1
  echo "== $name: exit $?" >> "$log"
}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv >> "$log" 2>&1
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" >> "$log" 2>&1

step population 90 check_capture python3 scripts/check_capture.py --out "$out/capture_check_cuda.md"
# populations at K = 128 and 512 (captured wide step) and one run alone (a population of one, captured)
# against separate eager runs; 1,000+ steps so that building 512 models does not dominate
step population 150 bench_population python3 scripts/bench_population.py --device cuda --members 128 512 \
  --steps 1000 --rounds 1 --separate-members 2 --forms wide:graph --out "$out/population_cuda.md"
step population 90 bench_single python3 scripts/bench_population.py --device cuda --members 1 --steps 2000 \
  --rounds 1 --forms auto:graph --out "$out/single_run_cuda.md"
# one run (a population of one) per plugin in the same CNN training step, eager and captured
step population 90 step_norms python3 scripts/bench_norms.py --device cuda --in-step --rounds 1 \
  --out "$out/step_norms_cuda.md"
step bench_norms 200 bench_norms python3 scripts/bench_norms.py --device cuda --rounds 10 --inner 20 --out "$out/norms_cuda.md"
step check_cuda 150 check_cuda python3 scripts/check_cuda.py --out "$out/cuda_check.md"
step check_cuda 60 check_diagnose python3 scripts/check_diagnose_cuda.py --out "$out/diagnose_cuda.md"
# host time of each piece of the Triton path and of the plugins slowest at small shapes
step profile_norm 60 profile_norm bash -c 'python3 scripts/profile_norm.py rmsnorm batchrenorm ghost_batchnorm switchnorm evonorm_b0 > "$0"' \
  "$out/profile_cuda.txt"
step bench_train 60 bench_train python3 scripts/bench_train.py --device cuda --steps 300 --rounds 5 --out "$out/train_cuda.md"
for precision in fp32 bf16; do  # images/s of the CIFAR ResNet-20 at batch 128 (synthetic data without CIFAR)
  step bench_train 90 "bench_train cifar $precision" python3 scripts/bench_train.py --task cifar10_resnet20 --device cuda \
    --precision "$precision" --batch-sizes 128 --steps 50 --rounds 3 --out "$out/train_cifar10_resnet20_cuda_$precision.md"
done

e2e="$out/e2e_cuda.md"
selected e2e && printf '# normbench-run on CUDA\n\n| overrides | status | test_error | steps | s/step | env |\n|---|---|---:|---:|---:|---|\n' > "$e2e"
run_e2e() {
  local dir
  selected e2e || return 0
  dir="$(mktemp -d)"
  step e2e 90 "normbench $*" python3 -m normbench runtime.device=cuda train.budget=steps train.steps=300 \
    runtime.progress=false "hydra.run.dir=$dir" "$@"
  python3 - "$dir/result.json" "$*" >> "$e2e" 2>> "$log" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
env = {k: r["env"].get(k) for k in ("gpu", "precision", "channels_last", "compile")}
print(f"| {sys.argv[2]} | {r['status']} | {r['metrics'].get('test_error')} | {r['steps']} "
      f"| {r.get('time_per_step_s', 0):.5f} | {env} |")
EOF
}
run_e2e task=mnist1d_mlp norm=batchnorm
run_e2e task=digits_cnn norm=groupnorm runtime.precision=bf16 runtime.channels_last=true
run_e2e task=mnist1d_cnn norm=evonorm_b0 runtime.precision=fp16
run_e2e task=mnist1d_cnn norm=frn runtime.compile=true
run_e2e task=mnist1d_mlp norm=batchrenorm runtime.precision=bf16

step convert 60 convert_torchvision python3 scripts/check_convert_torchvision.py --device cuda --out "$out/convert_torchvision_cuda.md"
echo "done $(date -u +%H:%M:%S)" >> "$log"
