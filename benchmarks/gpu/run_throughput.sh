#!/bin/bash
# chimera-serve vs vLLM's OpenAI server on the deepest FP8 DeepSeek-V3-width model one H200 holds (issue 20, 3b),
# then the R1T2 projection from what it measured (3c). Needs vLLM's bundle in /tmp/site and the extra wheels in
# /tmp/site-extra (run_stash.sh). Results to $OUT. DEADLINE (epoch seconds, set at the call's start) bounds the run.
# Usage: bash benchmarks/gpu/run_throughput.sh [WORK]       (TP_ARGS: extra serve_throughput.py flags)
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
WORK=${1:-/root/throughput}; DEST=${OUT:-$WORK/out}; mkdir -p "$WORK" "$DEST"
export PYTHONPATH=/tmp/site:/tmp/site-extra:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VLLM_USE_DEEP_GEMM=0 VLLM_MOE_USE_DEEP_GEMM=0 VLLM_USE_FLASHINFER_SAMPLER=0
rm -rf /dev/shm/fp8child-parents  # the FP8-child call's parents, if a failed build left them
LEFT=$(( ${DEADLINE:-$(( $(date +%s) + 560 ))} - $(date +%s) - 20 ))  # 20 s for the projection and the copies
timeout "$LEFT" python3 benchmarks/gpu/serve_throughput.py --work "$WORK" --results "$DEST" --check ${TP_ARGS:-}
status=$?
for f in "$DEST/gpu-serve-throughput.json" "$DEST/gpu-serve-throughput-partial.json"; do
  [ -e "$f" ] && { python3 benchmarks/gpu/project_r1t2.py "$f" --results "$DEST"; break; }
done
tar -C "$WORK" -czf "$DEST/throughput-logs.tar.gz" logs 2>/dev/null
ls -la "$DEST"
exit $status
