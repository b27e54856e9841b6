# syntax=docker/dockerfile:1
# chimera-serve on NVIDIA GPUs, on vLLM's release image (H100/H200: the k8s 8-GPU Deployment and LeaderWorkerSet).
#
#   docker build -f docker/server-gpu.Dockerfile -t chimera/server-gpu:0.1.0 .
#   docker run --rm --gpus all --ipc=host -p 8000:8000 -v /models:/models:ro \
#     -v "$PWD/keys:/etc/chimera/api-keys:ro" chimera/server-gpu:0.1.0 \
#     --model /models/r1t2 --config /etc/chimera/production.yaml --api-key-file /etc/chimera/api-keys/keys
#
# Base: vllm/vllm-openai v0.30.0 (CUDA 13, NVIDIA driver >= 580; for CUDA 12 drivers build with
# --build-arg VLLM_IMAGE=vllm/vllm-openai:v0.30.0-cu129), a release in the `gpu` extra's range. Every package
# of that image keeps its version (vLLM, torch, NCCL, Ray); pip adds only what chimera needs besides.
ARG VLLM_IMAGE=vllm/vllm-openai:v0.30.0@sha256:8a69ffad015f138d7170c4ddc429e230a3bc1c1719f67e14324749df200a4b90
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS wheel
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY merge merge
COPY chimera_serve chimera_serve
COPY benchmarks benchmarks
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM ${VLLM_IMAGE}
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1
COPY --from=wheel /wheels /tmp/wheels
# The image's own packages, name==version, as constraints: nothing of vLLM's stack moves.
RUN python3 -m pip list --format=freeze > /tmp/image-constraints.txt \
    && python3 -m pip install --constraint /tmp/image-constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/image-constraints.txt \
    && useradd --uid 10001 --create-home --home-dir /home/chimera --shell /usr/sbin/nologin chimera
COPY chimera_serve/production.yaml /etc/chimera/production.yaml
COPY --chmod=755 docker/healthcheck.py /usr/local/bin/chimera-healthcheck
COPY --chmod=755 docker/chimera-ray-node /usr/local/bin/chimera-ray-node
# Caches (torch.compile, Triton, FlashInfer JIT) under HOME; Kubernetes mounts a volume there.
ENV HOME=/home/chimera \
    XDG_CACHE_HOME=/home/chimera/.cache \
    VLLM_CACHE_ROOT=/home/chimera/.cache/vllm \
    CHIMERA_HOST=0.0.0.0 \
    CHIMERA_PORT=8000 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001
WORKDIR /home/chimera
EXPOSE 8000
# /health is 200 from the moment the port is bound, loading included: a short start period is enough.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 CMD ["chimera-healthcheck"]
ENTRYPOINT ["chimera-serve"]
CMD ["--model", "/models/chimera", "--config", "/etc/chimera/production.yaml"]
