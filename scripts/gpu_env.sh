# Sourced by the GPU scripts (gpu_checks.sh, study_gpu.sh, population_gpu.sh) from the project root: the
# tree on PYTHONPATH, unbuffered output, and the wheels the device image lacks (hydra-core, omegaconf,
# antlr4 4.9.3, mnist1d: ../shared/gpu/prepare_wheels.sh builds them into .whl/) installed from .whl/.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="/tmp/site:$PWD"
fi
