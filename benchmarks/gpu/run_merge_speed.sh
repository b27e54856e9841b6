#!/bin/bash
# On the GPU machine: merge speed on the CPU and with --device cuda side by side against the I/O floor, the
# CUDA-built child compared with the CPU-built one byte for byte, and the GPU arithmetic by chunk size; first,
# merge_parity.py: the same merge math on CUDA and the CPU, step by step.
# The machine has torch, numba, safetensors, typer and rich but not pydantic: carry its cp312 wheels in .whl/
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 --implementation cp \
#     -d .whl pydantic==2.14.3
# Usage: bash benchmarks/gpu/run_merge_speed.sh [LAYERS] [REPS]   (results go to $OUT when set, the device tool's)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
if ! python3 -c "import pydantic" 2>/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c "import numba, numpy, torch; print('numba', numba.__version__, 'numpy', numpy.__version__,
  'torch', torch.__version__, torch.cuda.get_device_name(0), 'cores', __import__('os').cpu_count())" || exit 1
python3 -m benchmarks.gpu.merge_parity 3 || exit 1
python3 -m benchmarks.merge_speed --only speed --gpu --layers "${1:-2}" --reps "${2:-3}" --results merge-speed-gpu \
  --work /root/chimera-bench
status=$?
cp benchmarks/results/merge-speed-gpu.* benchmarks/results/merge-parity-gpu.* "${OUT:-.}/" 2>/dev/null
exit $status
