#!/bin/bash
# A bundle-carrying device call (issue 20's run plan): stash vLLM bundle part K, install the carried extra wheels,
# and from the call named by BUILD_AT on, keep the FP8-child build running in the background (it needs no vLLM:
# synthetic parents, chimera-merge --device cuda, verify, transformers' greedy tokens) while later calls carry.
# Usage (repo root on the device): bash benchmarks/gpu/run_stash.sh K   [BUILD_AT=K0, default 0]
# The machine keeps /root/stash, /tmp/site-extra and the build's files only while it stays warm (30 s between calls).
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
K=$1
mkdir -p /root/stash && mv .vllm-bundle/p"$K"/* /root/stash/ || exit 1
ls -la /root/stash
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-extra .whl/*.whl || exit 1
fi
if [ "$K" = 0 ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  df -h / /tmp /root /dev/shm; free -g; nproc
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
fi
if [ "$K" -ge "${BUILD_AT:-0}" ] && [ ! -e /root/fp8child.started ] && [ -d /tmp/site-extra ]; then
  touch /root/fp8child.started
  setsid nohup bash benchmarks/gpu/run_fp8_child.sh build >/root/fp8child-bg.log 2>&1 </dev/null &
  echo "FP8-child build started in the background (log /root/fp8child-bg.log)"
fi
sleep 2; tail -n 5 /root/fp8child-bg.log 2>/dev/null
exit 0
