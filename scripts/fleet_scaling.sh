#!/usr/bin/env bash
# Fleet scaling on one host's CPUs, ONNX Runtime targets only (issue 24): bench_fleet.py with
# 1, 2, 4, 8 and 16 workers on 16 regions x 2 ONNX Runtime targets (32 cells), PP-OCRv4 rec.
# Writes $OUT/bench_fleet_scaling.json (the benchmark's own JSON, load before and after each
# run, every task's seconds), bench_fleet_scaling.txt (its output) and lscpu.txt.
#
# Two steps. Here (with a package index and the rapidocr-onnxruntime wheel installed):
#   bash scripts/fleet_scaling.sh prepare
# fills .whl/ with the pure-Python wheels the lent GPU image lacks (it has Python 3.12, numpy,
# onnx, onnxruntime; no index) and .fleet-inputs/ with the model and the rendered lines (the host
# has no PIL and no fonts). regiontrt itself runs from the copied working tree (PYTHONPATH), and
# the local process pool needs no Dask. Then on the device, carrying [".whl", ".fleet-inputs"]:
#   bash scripts/fleet_scaling.sh
# WORKERS (default 1,2,4,8,16) and REGIONS (default 16) override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
# The core dependencies of regiontrt the image lacks, and fsspec (fleet data is read through it).
WHEELS=(onnx-graphsurgeon polygraphy sympy mpmath fsspec)

if [ "${1:-run}" = prepare ]; then
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
  python3 benchmarks/bench_fleet.py --prepare --inputs .fleet-inputs
  ls -la .whl
  du -shc .whl .fleet-inputs
  exit 0
fi

OUT="${OUT:-$PWD/out}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
SITE="${SITE:-/tmp/site}"  # where the carried wheels are installed
if ! python3 -c "import onnx_graphsurgeon, polygraphy, sympy, fsspec" 2>/dev/null; then
  ls .whl/*.whl >/dev/null 2>&1 || { echo "fleet_scaling: no .whl/ (run: $0 prepare)"; exit 2; }
  python3 -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl
fi
export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
[ -f .fleet-inputs/model.onnx ] || { echo "fleet_scaling: no .fleet-inputs/ (run: $0 prepare)"; exit 2; }
lscpu > "$OUT/lscpu.txt" 2>&1 || true
python3 benchmarks/bench_fleet.py --inputs .fleet-inputs --targets onnxruntime \
  --regions "${REGIONS:-16}" --workers "${WORKERS:-1,2,4,8,16}" --no-peer \
  --json "$OUT/bench_fleet_scaling.json" 2>&1 | tee "$OUT/bench_fleet_scaling.txt"
exit "${PIPESTATUS[0]}"
