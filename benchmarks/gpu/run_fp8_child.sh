#!/bin/bash
# The FP8 child on the GPU machine (issue 20, 3a). Two halves:
#   build  - started in the background by run_stash.sh: parents, chimera-merge --device cuda (FP8 and bf16
#            children), verify, transformers' greedy tokens; touches /root/fp8child.done (or .failed) at the end.
#   serve  - after vLLM's bundle is unpacked into /tmp/site: waits for the build, then chimera-serve on each child,
#            512 prompts through the HTTP API (PROMPTS; one prompt moves an agreement by 0.002, so the 0.05 gate
#            is not decided by sampling noise), serve_check on the FP8 server; results and logs to $OUT.
#            DEADLINE (epoch seconds, set at the call's start) bounds the wait and the run.
# Usage: bash benchmarks/gpu/run_fp8_child.sh build|serve [WORK]
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
MODE=$1; WORK=${2:-/root/fp8child}; DEST=${OUT:-$WORK/out}; mkdir -p "$WORK" "$DEST"
export PYTHONPATH=/tmp/site:/tmp/site-extra:.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export VLLM_USE_DEEP_GEMM=0 VLLM_MOE_USE_DEEP_GEMM=0 VLLM_USE_FLASHINFER_SAMPLER=0
G="python3 benchmarks/gpu/fp8_child.py --work $WORK --prompts ${PROMPTS:-512} --check"
if [ "$MODE" = build ]; then
  # The parents (~28 GB at one MoE layer) go to RAM when the disk cannot also hold them: /dev/shm, or a tmpfs of
  # our own where /dev/shm is small.
  RAM=/dev/shm
  if [ "$(df --output=avail -B1 /dev/shm 2>/dev/null | tail -1)" -lt 32000000000 ] 2>/dev/null; then
    mkdir -p /mnt/fp8ram && mount -t tmpfs -o size=48g tmpfs /mnt/fp8ram && RAM=/mnt/fp8ram
  fi
  df -h / "$RAM"
  if $G --stages build,hf --ram-dir "$RAM"; then touch /root/fp8child.done; else touch /root/fp8child.failed; fi
  exit 0
fi
DEADLINE=${DEADLINE:-$(( $(date +%s) + 560 ))}  # epoch seconds: the call's end, less a margin
while [ "$(date +%s)" -lt $(( DEADLINE - 240 )) ]; do  # serving both children needs ~4 minutes
  [ -e /root/fp8child.done ] || [ -e /root/fp8child.failed ] && break; sleep 2
done
tail -n 30 /root/fp8child-bg.log
[ -e /root/fp8child.done ] || { echo "FP8-child build not finished (see above)"; cp /root/fp8child-bg.log "$DEST/"; exit 1; }
timeout $(( DEADLINE - $(date +%s) )) $G --stages serve,report --results "$DEST"
status=$?
cp /root/fp8child-bg.log "$DEST/" 2>/dev/null
tar -C "$WORK" -czf "$DEST/fp8child-logs.tar.gz" --ignore-failed-read build.json hf.json serve.json logs 2>/dev/null
ls -la "$DEST"
exit $status
