#!/bin/bash
# On the GPU machine, once vLLM's bundle is unpacked into /tmp/site (../shared/gpu/README.md): the FP8 token gate.
# Usage: bash benchmarks/gpu/run_gate.sh [WORK] [STAGES] [RUNS]
# Stages resume (finished checkpoints and runs are kept in WORK), so a call cut off at its limit can be repeated.
# The report and a tarball of the logs go to $OUT when set (the device tool's output folder), else to WORK.
set -uo pipefail
WORK=${1:-/root/gate}; STAGES=${2:-build,runs}; RUNS=${3:-vllm_fp8,vllm_bf16,hf_bf16,hf_fp8,hf_fp8_deq,vllm_half,hf_half}
export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VLLM_USE_DEEP_GEMM=0 VLLM_MOE_USE_DEEP_GEMM=0 VLLM_USE_FLASHINFER_SAMPLER=0
cd "$(dirname "$0")/../.." || exit 1
G=benchmarks/gpu/fp8_token_gate.py
DEST=${OUT:-$WORK}
timeout "${BUDGET_S:-500}" python3 $G --work "$WORK" --preset "${PRESET:-full}" --stages "$STAGES" --runs "$RUNS" --run-timeout 300
echo "stages exit: $?"
python3 $G --work "$WORK" --preset "${PRESET:-full}" --stages report --out "$DEST/gpu-fp8-token-gate.json"
tar -C "$WORK" -czf "$DEST/gate-logs.tar.gz" --ignore-failed-read build.json runs.json tokens 2>/dev/null
ls -la "$DEST"
