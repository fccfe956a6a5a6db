#!/usr/bin/env bash
# The one script run on a lent NVIDIA GPU: every test marked `gpu` (and `tensorrt`, which skip
# unless a real TensorRT is installed) in the repository, then the GPU benchmarks. Logs and JSON go to $OUT (7 files): nvidia-smi.txt, pytest-gpu.log, pytest-gpu.xml,
# bench_gpu_transfer.{txt,json}, bench_infer_overhead.{txt,json}.
#
# Pure-Python wheels the GPU image lacks travel in .whl/ (make them with
# /work/shared/device/prepare-wheels.sh); the device call is:
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site:$PWD && bash scripts/gpu_check.sh
# Exit status: pytest's (the benchmarks' failures are reported but do not mask it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if ! python3 -c "import polygraphy, onnx_graphsurgeon" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
# NVRTC for the test double's kernels: the wheel's copy, else the toolkit's.
if [ -z "${CUDA_HOME:-}" ] && [ -d /usr/local/cuda ]; then export CUDA_HOME=/usr/local/cuda; fi

nvidia-smi 2>&1 | tee "$OUT/nvidia-smi.txt"
python3 -c "import sys, numpy, cuda.bindings; print(sys.version.split()[0], 'numpy', numpy.__version__, 'cuda-bindings', cuda.bindings.__version__)"

timeout_flag=()  # a hung test is killed with its traceback instead of eating the lease
if python3 -c "import pytest_timeout" 2>/dev/null; then timeout_flag=(--timeout=240); fi
python3 -m pytest -m "gpu or tensorrt" -q -rs -p no:cacheprovider --continue-on-collection-errors \
  "${timeout_flag[@]}" --junitxml="$OUT/pytest-gpu.xml" tests 2>&1 | tee "$OUT/pytest-gpu.log"
rc=${PIPESTATUS[0]}

for bench in bench_gpu_transfer bench_infer_overhead; do
  python3 "benchmarks/$bench.py" --json "$OUT/$bench.json" 2>&1 | tee "$OUT/$bench.txt" \
    || echo "benchmark $bench failed (status ${PIPESTATUS[0]})"
done
echo "gpu_check: pytest exit status $rc"
exit "$rc"
